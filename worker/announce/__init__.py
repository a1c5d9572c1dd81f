"""The public announcement: the static site and publishing it."""
