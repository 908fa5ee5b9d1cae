"""The text of every code the embedded server sends, in English and Chinese.

A real server answers ``info`` with the code's text alone (its ``code2info``
table) and, over HTTP, translates it by the ``lang`` query parameter or the
``Accept-Language`` header (its ``release/conf/i18n`` message files, English
by default). The texts below are those files' for the codes this server
sends. Pure data and functions; thread-safe.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LANGUAGES", "code_text", "pick_language"]

_EN: Final[dict[int, str]] = {
    200000: "execute success",
    200001: "discover data is no change",
    400000: "bad request",
    400001: "request decode failed",
    400002: "empty request",
    400004: "invalid discover resource",
    400103: "invalid parameter",
    400110: "invalid namespace name",
    400120: "invalid service name",
    400130: "invalid instance id",
    400131: "invalid instance host",
    400132: "invalid instance port",
    400136: "invalid instance protocol",
    400137: "invalid instance version",
    400138: "invalid instance logic set",
    400140: "server not open health check",
    400150: "the length of metadata is too long or metadata contains invalid characters",
    400201: "existed resource",
    400202: "not found resource",
    400208: "the same instance request",
    400301: "not found service",
    400303: "not found instances",
    400305: "not found namespace",
    401000: "unauthorized",
    401001: "access is not approved",
    401002: "auth token empty",
    401003: "token already disabled",
    401004: "token not existed",
    500000: "execute exception",
    500001: "store layer exception",
    500007: "heartbeat execute exception",
}

_ZH: Final[dict[int, str]] = {
    200000: "执行成功",
    200001: "服务发现数据无变化",
    400000: "请求错误",
    400001: "请求解析失败",
    400002: "空请求",
    400004: "服务发现资源非法",
    400103: "参数非法",
    400110: "命名空间名称非法",
    400120: "服务名称非法",
    400130: "实例ID非法",
    400131: "实例Host非法",
    400132: "实例端口非法",
    400136: "实例协议非法",
    400137: "实例版本非法",
    400138: "实例逻辑集合非法",
    400140: "服务端未开启健康检查",
    400150: "元数据长度过长或包含非法字符",
    400201: "资源已存在",
    400202: "未找到资源",
    400208: "实例请求重复",
    400301: "服务未找到",
    400303: "示例未找到",
    400305: "命名空间未找到",
    401000: "未经授权",
    401001: "权限不被允许",
    401002: "鉴权token为空",
    401003: "token已被禁用",
    401004: "token不存在",
    500000: "执行异常",
    500001: "存储层异常",
    500007: "心跳异常",
}

LANGUAGES: Final = {"en": _EN, "zh": _ZH}
"""The languages texts exist in, by primary language subtag."""
DEFAULT_LANGUAGE: Final = "en"


def code_text(code: int, language: str = DEFAULT_LANGUAGE) -> str:
    """The text of ``code`` in ``language`` (English when there is none in it)."""
    text = LANGUAGES.get(language, _EN).get(code) or _EN.get(code)
    return text if text is not None else f"code {code}"


def _ranked(header: str) -> list[str]:
    """The primary subtags of an ``Accept-Language`` value, by falling weight."""
    weighted: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        weight = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                weight = float(params[2:])
            except ValueError:
                weight = 0.0
        primary = tag.strip().split("-", 1)[0].split("_", 1)[0].lower()
        if primary and weight > 0:
            weighted.append((-weight, position, primary))
    return [primary for _, _, primary in sorted(weighted)]


def pick_language(*preferences: str | None) -> str:
    """The first language with texts among ``preferences`` (each a language tag or an
    ``Accept-Language`` list, most preferred first), else English."""
    for preference in preferences:
        for primary in _ranked(preference or ""):
            if primary in LANGUAGES:
                return primary
    return DEFAULT_LANGUAGE
