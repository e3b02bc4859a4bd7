"""Removing secrets from text before it leaves the process.

Every piece of transcript text is passed through :func:`redact` before it is put into a request.
Each secret is replaced by ``[REDACTED:<kind>]`` and counted by kind; the counts travel in the
session's ``Output.issues`` (``redacted_<kind>``) so that a run summary shows how much was removed.

The patterns favour removing too much: a false positive costs a few words of context, a false
negative sends a credential to a third party. Order matters: specific patterns run before general
ones (an Anthropic key also looks like an OpenAI one), and every replacement is itself immune to the
later patterns.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

PLACEHOLDER = "[REDACTED:{kind}]"


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    #: The regex group holding the secret; 0 is the whole match. Only that part is replaced, so
    #: that ``password=`` or ``Bearer`` stay readable around the placeholder.
    group: int = 0


def _rule(kind: str, pattern: str, group: int = 0, flags: int = 0) -> _Rule:
    return _Rule(kind, re.compile(pattern, flags), group)


# Distinctive prefixes (``sk-ant-``, ``ghp_``, ``AIza``…) match anywhere, even glued to other text.
# Only the generic OpenAI form ``sk-<alphanumerics>`` needs a start boundary: without it words such as
# ``risk-assessment…`` would lose their tail.
_START = r"(?<![A-Za-z0-9_\-])"

RULES: tuple[_Rule, ...] = (
    # Whole PEM blocks, and a BEGIN line whose END never came (a truncated paste): up to the end.
    _rule(
        "private_key",
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|.*\Z)",
        flags=re.DOTALL,
    ),
    _rule("anthropic_key", r"sk-ant-[A-Za-z0-9_\-]{16,}"),
    # OpenAI: sk-proj-…, sk-svcacct-…, sk-admin-…, and the older sk-<48 alphanumerics>.
    _rule("openai_key", r"sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{16,}"),
    _rule("openai_key", _START + r"sk-[A-Za-z0-9]{20,}"),
    _rule("aws_access_key_id", r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}(?![A-Z0-9])"),
    _rule(
        "aws_secret_access_key",
        r"(?i)aws_?secret_?(?:access_?)?key[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])",
        group=1,
    ),
    _rule("github_token", r"gh[pousr]_[A-Za-z0-9]{30,}"),
    _rule("github_token", r"github_pat_[A-Za-z0-9_]{20,}"),
    _rule("slack_token", r"xox[abposre]-[A-Za-z0-9\-]{10,}"),
    _rule("slack_webhook", r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9_/\-]+"),
    _rule("google_api_key", r"AIza[0-9A-Za-z_\-]{35}"),
    _rule("stripe_key", r"(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}"),
    _rule("stripe_key", r"whsec_[0-9A-Za-z]{24,}"),
    _rule("jwt", r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    # Authorization headers and their look-alikes: keep the scheme, remove the credential.
    _rule("bearer_token", r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{12,}=*)", group=1),
    _rule("basic_auth", r"(?i)\bbasic\s+([A-Za-z0-9+/]{12,}={0,2})(?![A-Za-z0-9+/=])", group=1),
    # scheme://user:password@host — the password only.
    # The password may itself hold "@": it runs to the last "@" before the host.
    _rule("url_password", r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*:([^\s/]+)@", group=1),
    # password=…, api_key: "…", secret_token = … in configs, env files and commands.
    _rule(
        "assigned_secret",
        r"(?i)\b(?:[A-Z0-9_]*_)?(?:password|passwd|pwd|secret|api_?key|access_?token|auth_?token|"
        r"client_?secret|private_?key)[\"']?\s*[:=]\s*[\"']?([^\s\"'`,;]{8,})",
        group=1,
    ),
)


def _replace(kind: str, group: int, counts: Counter[str]) -> Callable[[re.Match[str]], str]:
    def substitute(match: re.Match[str]) -> str:
        secret = match.group(group)
        if secret.startswith("[REDACTED:"):
            return match.group(0)  # already removed by an earlier, more specific rule
        counts[kind] += 1
        start, end = match.span(group)
        offset = match.start(0)
        whole = match.group(0)
        return whole[: start - offset] + PLACEHOLDER.format(kind=kind) + whole[end - offset :]

    return substitute


def redact(text: str, counts: Counter[str] | None = None) -> tuple[str, Counter[str]]:
    """``text`` with every secret replaced, and the number removed by kind (added to ``counts``)."""
    found: Counter[str] = counts if counts is not None else Counter()
    for rule in RULES:
        text = rule.pattern.sub(_replace(rule.kind, rule.group, found), text)
    return text, found
