"""A timeline entry in plain words, for when its announcement templates cannot render it.

An event that got stored but that its templates fail on (a date no filter expected, a value
a template does not know) must not keep the announcement down: the people waiting for it are
covered only once it is public. ``plain_content`` builds the entry from the event as it was
stored (JSON, not the model, so even an event that no longer parses has words), with no
template, no formatting that can fail and every value escaped: a fixed list of labelled
fields per locale, values shown exactly as they were sent (a date in its own offset).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from worker.core.messages import Content
from worker.delivery.rendering import FALLBACK_LOCALE, one_line

#: What each event type is called, per locale; the entry's title starts with it.
TYPE_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "security_incident": "Security incident",
        "service_notice": "Service notice",
        "policy_change": "Policy change",
        "account_notice": "Account notice",
    },
    "zh-CN": {
        "security_incident": "安全事件公告",
        "service_notice": "服务公告",
        "policy_change": "政策变更公告",
        "account_notice": "账户通知",
    },
}

#: The fields shown, in this order, with their labels per locale; any other field is left out.
FIELD_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "status": "Status",
        "incident_id": "Incident ID",
        "severity": "Severity",
        "detected_at": "Detected at",
        "kind": "Kind",
        "starts_at": "Starts",
        "ends_at": "Ends",
        "services": "Services",
        "document": "Document",
        "version": "Version",
        "effective_at": "Takes effect",
        "url": "Full text",
        "situation": "What happened",
        "impact": "Possible impact",
        "measures": "What we have done and will do",
        "advice": "What you can do",
        "remedies": "Remedies available to you",
        "description": "Details",
        "summary_of_changes": "What changes",
        "summary": "What changes",
    },
    "zh-CN": {
        "status": "处理状态",
        "incident_id": "事件编号",
        "severity": "严重程度",
        "detected_at": "发现时间",
        "kind": "类型",
        "starts_at": "开始时间",
        "ends_at": "结束时间",
        "services": "涉及服务",
        "document": "文件",
        "version": "版本",
        "effective_at": "生效时间",
        "url": "全文",
        "situation": "事件基本情况",
        "impact": "可能造成的影响",
        "measures": "已采取或将要采取的处置措施",
        "advice": "防范措施与降低风险的建议",
        "remedies": "补救措施",
        "description": "详情",
        "summary_of_changes": "变更内容",
        "summary": "变更内容",
    },
}

_MAX_VALUE_CHARS = 20_000


def plain_content(stored: Mapping[str, Any], locale: str) -> Content:
    """The entry for one stored event (its JSON body) in ``locale``, without any template.

    A locale without its own words here gets English labels.
    """
    words = locale if locale in FIELD_LABELS else FALLBACK_LOCALE
    data = stored.get("data")
    data = data if isinstance(data, Mapping) else {}
    event_type = str(stored.get("type", ""))
    kind = TYPE_WORDS[words].get(event_type, event_type.replace("_", " ").capitalize() or "Announcement")
    title = _shown(data.get("title"))
    headline = (f"【{kind}】{title}" if words == "zh-CN" else f"{kind}: {title}") if title else kind
    subject = one_line(headline)
    fields = [(label, _shown(data.get(name))) for name, label in FIELD_LABELS[words].items()]
    fields = [(label, value) for label, value in fields if value]
    text = "\n\n".join([title or kind, *(f"{label}:\n{value}" for label, value in fields)]) + "\n"
    html = Markup("<p><strong>{}</strong></p>\n").format(title or kind)
    if fields:
        rows = Markup("").join(
            Markup('<dt>{}</dt><dd style="white-space:pre-line;">{}</dd>\n').format(label, value)
            for label, value in fields
        )
        html += Markup("<dl>\n{}</dl>\n").format(rows)
    return Content(
        cache_key=f"{stored.get('event_id', '')}:announcement:{locale}:plain",
        locale=locale,
        subject=subject,
        text=text,
        html=str(html),
    )


def _shown(value: Any) -> str:
    """A field's value as text: strings and numbers as they are, lists joined; others omitted."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, str | int | float):
        return str(value).strip()[:_MAX_VALUE_CHARS]
    if isinstance(value, list):
        return ", ".join(_shown(item) for item in value if _shown(item))[:_MAX_VALUE_CHARS]
    return ""
