"""The secret formats :mod:`.redaction` looks for, as data: a kind, a pattern, and the part to remove.

Three sources, in order of priority (when two findings overlap, the earlier rule names the kind):

1. :data:`SPECIFIC_RULES`: formats with a distinctive shape (``sk-ant-``, ``glpat-``, PEM blocks,
   ``scheme://user:password@``…), including those the detector in 2. lacks or matches too narrowly.
2. :func:`detector_rules`: the patterns of detect-secrets' regex plugins (a maintained detector,
   Apache-2.0), read from the installed package so that its updates reach us with a version bump.
3. :data:`GENERIC_RULES`: what has no fixed shape but a telling context: values assigned to names
   such as ``PASSWORD``/``SECRET``/``TOKEN``/``API_KEY`` (quoted values may hold spaces), command
   flags (``--token=``, ``curl -u user:pass``), connection-string fields (``AccountKey=``,
   ``Password=``), and high-entropy strings next to such words (checked by :func:`entropy`).

Card numbers are found by :data:`CARD_NUMBER` and confirmed by the Luhn check (:func:`luhn_valid`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import pkgutil
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: A placeholder already in the text (model output that echoes a redacted conversation) is no secret.
PLACEHOLDER_PREFIX = "[REDACTED:"


@dataclass(frozen=True)
class Rule:
    """One secret format."""

    kind: str
    pattern: re.Pattern[str]
    #: The regex group holding the secret (0: the whole match). Only that part is replaced, so that
    #: ``password=`` or ``Bearer`` stay readable around the placeholder.
    group: int = 0
    #: An extra test of the found value (entropy, Luhn, not a placeholder word…); None accepts all.
    check: Callable[[str], bool] | None = None
    #: Whether the rule is distinctive enough to run on text re-joined across line breaks.
    distinctive: bool = True
    #: A lower-case word the text must contain for the rule to run (a pattern too slow to try blindly).
    needs: str = ""


def _rule(
    kind: str,
    pattern: str,
    group: int = 0,
    flags: int = 0,
    check: Callable[[str], bool] | None = None,
    distinctive: bool = True,
) -> Rule:
    return Rule(kind, re.compile(pattern, flags), group, check, distinctive)


def entropy(text: str) -> float:
    """Shannon entropy of ``text`` in bits per character."""
    if not text:
        return 0.0
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def luhn_valid(digits: str) -> bool:
    """Whether a run of digits (spaces and dashes ignored) passes the Luhn check of card numbers."""
    numbers = [int(char) for char in digits if char.isdigit()]
    total = 0
    for position, number in enumerate(reversed(numbers)):
        if position % 2 == 1:
            number = number * 2 - 9 if number > 4 else number * 2
        total += number
    return 13 <= len(numbers) <= 19 and total % 10 == 0


#: Words that stand where a value would be but are not one: types, placeholders, references.
_NOT_A_VALUE = re.compile(
    r"(?i)^(?:str|string|int|bool|none|null|nil|true|false|undefined|required|optional|any|object|"
    r"password|secret|token|redacted|changeme|example|xxx+|\*+|\.\.\.|…|<[^>]*>|\$\{?[\w.]+\}?|"
    r"%\(?\w+\)?s?|\{[^{}]*\}|\{\{.*\}\}|\[[A-Za-z_]+\]|<\|?[\w ]+\|?>|os\.environ.*|process\.env.*|env\(.*|getenv.*)$"
)
#: An unquoted value that reads as code (a call, an attribute, a bare identifier) is not a secret.
_CODE_LIKE = re.compile(r"^(?:[A-Za-z_][A-Za-z_]*(?:\.[A-Za-z_]\w*)*(?:\(.*)?|.*\(.*|.*\).*)$")


def _plausible_value(value: str) -> bool:
    """A quoted value: anything but a placeholder word."""
    stripped = value.strip().strip("\\").strip()
    return len(stripped) >= 4 and not _NOT_A_VALUE.match(stripped)


def _plausible_bare_value(value: str) -> bool:
    """An unquoted value: not a placeholder and not code (it needs a digit or a symbol)."""
    return _plausible_value(value) and not _CODE_LIKE.match(value)


#: A type name where a value would be (``SecretStr``, ``Token``, ``bytes``).
_TYPE_NAME = re.compile(r"^(?:[A-Z][a-z]+)+$|^(?:bytes|float|double|text|varchar|char)$|^[A-Za-z_]\w*(?:\.\w+)+$")


def _literal_value(value: str) -> bool:
    """A value on a config line: anything but a placeholder, a type name, an attribute or a reference."""
    return _plausible_value(value) and not _TYPE_NAME.match(value) and not value.startswith(("$", "!", "&", "*"))


def _credential_like(value: str) -> bool:
    """Not a plain word: letters mixed with digits or symbols, or mixed case."""
    classes = sum(bool(re.search(pattern, value)) for pattern in (r"[a-z]", r"[A-Z]", r"\d", r"[+/=_\-.~]"))
    return classes >= 2 and not re.fullmatch(r"[A-Z]?[a-z]+(?:_[a-z]+)*", value)


def _high_entropy(value: str) -> bool:
    """A token-like value: long, varied, mixing letters with digits or symbols."""
    classes = sum(bool(re.search(pattern, value)) for pattern in (r"[a-z]", r"[A-Z]", r"\d", r"[+/=_\-.~]"))
    return len(value) >= 16 and classes >= 2 and entropy(value) >= 3.5 and not _CODE_LIKE.match(value)


# Distinctive prefixes match anywhere, even glued to other text; a few need a start boundary so that
# words such as ``risk-assessment…`` keep their tail.
_START = r"(?<![A-Za-z0-9_\-])"
_END = r"(?![A-Za-z0-9_\-])"

SPECIFIC_RULES: tuple[Rule, ...] = (
    # Whole PEM blocks, and a BEGIN line whose END never came (a truncated paste): up to the end.
    _rule(
        "private_key",
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|.*\Z)",
        flags=re.DOTALL,
    ),
    _rule("private_key", r"PuTTY-User-Key-File-\d:.*?Private-MAC: *[0-9a-f]+", flags=re.DOTALL),
    # Key material without its BEGIN line: three or more full lines of base64.
    _rule(
        "key_material", r"(?:^[ \t]*[A-Za-z0-9+/]{60,}={0,2}[ \t]*\r?\n){3,}(?:[ \t]*[A-Za-z0-9+/]+={0,2})?", flags=re.M
    ),
    _rule("anthropic_key", r"sk-ant-[A-Za-z0-9_\-]{16,}"),
    # OpenAI: sk-proj-…, sk-svcacct-…, sk-admin-…, and the older sk-<48 alphanumerics>.
    _rule("openai_key", r"sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{16,}"),
    _rule("openai_key", _START + r"sk-[A-Za-z0-9]{20,}"),
    _rule(
        "aws_access_key_id",
        r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Z0-9])",
    ),
    _rule(
        "aws_secret_access_key",
        r"(?i)aws_?secret_?(?:access_?)?key[\\\"']*\s*[:=]\s*[\\\"']*([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])",
        group=1,
    ),
    _rule("github_token", r"gh[pousr]_[A-Za-z0-9]{30,}"),
    _rule("github_token", r"github_pat_[A-Za-z0-9_]{20,}"),
    _rule("gitlab_token", r"gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-[A-Za-z0-9_\-]{20,}"),
    _rule("slack_token", r"xox[abposre]-[A-Za-z0-9\-]{10,}"),
    _rule("slack_webhook", r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9_/\-]+"),
    _rule("google_api_key", r"AIza[0-9A-Za-z_\-]{35}"),
    _rule("google_oauth_secret", r"GOCSPX-[A-Za-z0-9_\-]{20,}"),
    _rule("stripe_key", r"(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}"),
    _rule("stripe_key", r"whsec_[0-9A-Za-z]{24,}"),
    _rule("npm_token", _START + r"npm_[A-Za-z0-9]{36}" + _END),
    _rule("pypi_token", r"pypi-[A-Za-z0-9_\-]{50,}"),
    _rule("heroku_token", r"HRKU-[A-Za-z0-9_\-]{20,}"),
    _rule("sendgrid_key", r"SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}"),
    _rule("twilio_key", _START + r"(?:AC|SK)[0-9a-f]{32}" + _END),
    _rule("digitalocean_token", r"do[por]_v1_[a-f0-9]{64}"),
    _rule("shopify_token", r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"),
    _rule("huggingface_token", _START + r"hf_[A-Za-z0-9]{34,}"),
    _rule("databricks_token", _START + r"dapi[a-f0-9]{32}(?:-\d)?" + _END),
    _rule("vault_token", _START + r"hv[sbr]\.[A-Za-z0-9_\-]{24,}"),
    _rule("doppler_token", r"dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,}"),
    _rule("age_secret_key", r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}"),
    _rule("jwt", r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    # Authorization headers and their look-alikes: keep the scheme, remove the credential.
    _rule("bearer_token", r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{12,}=*)", group=1, check=_credential_like),
    _rule("basic_auth", r"(?i)\bbasic\s+([A-Za-z0-9+/]{12,}={0,2})(?![A-Za-z0-9+/=])", group=1, check=_credential_like),
    # scheme://user:password@host — the password only. It may hold "@": it runs to the last "@".
    _rule("url_password", r"://[^\s/:@]{0,256}:([^\s/]{1,256})@", group=1),
    # scheme://token@host (a Sentry DSN key, a git token as the user name).
    _rule("url_token", r"://([A-Za-z0-9_\-]{16,256})@", group=1, check=_high_entropy),
)

#: A name that says its value is a secret (a part of ``DB_PASSWORD``, ``clientSecret``, ``api-key``…).
#: The match starts at the secret word, whatever precedes it, and the word ends the name or a part of
#: it (``_``, ``.``, ``-``, an upper-case letter): ``tokenizer`` and ``authors`` are not secret names.
#: Every repetition here and below is bounded or starts at a literal: redaction runs on whole turns
#: (megabytes of pasted logs), so no pattern may scan the rest of the text from every position.
_SECRET_NAME = (
    r"(?:(?:passw(?:or)?d|passphrase|pwd|secret|token|api[_\-]?key|apikey|access[_\-]?key|"
    r"private[_\-]?key|secret[_\-]?key|auth[_\-]?key|key[_\-]?data|key[_\-]?base|credentials?|"
    r"signing[_\-]?key|encryption[_\-]?key|master[_\-]?key|account[_\-]?key|session[_\-]?key|dsn|"
    r"auth)(?:(?-i:[_.\-A-Z0-9])[A-Za-z0-9_.\-]{0,40})?)(?![A-Za-z0-9])"
)
#: Between the name and its value: closing quotes (maybe JSON-escaped), then ``=``, ``:``, ``:=``, ``=>``.
_ASSIGN = r"[\\\"'`\]]*[ \t]*(?:=>|:=|=|:)[ \t]*"

GENERIC_RULES: tuple[Rule, ...] = (
    # NAME="two words" / password: 'a b c' / \"password\": \"hunter2 x\" (quoted: may hold spaces).
    _rule(
        "assigned_secret",
        r"(?i)" + _SECRET_NAME + _ASSIGN + r"(\\?[\"'`])((?:(?!\1)[^\n]){3,300}?)\1",
        group=2,
        check=_plausible_value,
        distinctive=False,
    ),
    # NAME=value in an env file or a shell: any value of 4 or more characters.
    _rule(
        "assigned_secret",
        r"(?:PASSWORD|PASSWD|PASS|PWD|SECRET|TOKEN|KEY|CREDENTIALS?|AUTH|DSN)(?:_[A-Z0-9_]{0,40})?=([^\s\"'`]{4,})",
        group=1,
        check=lambda value: _plausible_value(value) and not value.startswith("$"),
        distinctive=False,
    ),
    # password = hunter2!x / api_key: 9f8e7d… in code and configs (unquoted: must not read as code).
    _rule(
        "assigned_secret",
        r"(?i)" + _SECRET_NAME + _ASSIGN + r"([^\s\"'`,;()\[\]{}<>]{6,})",
        group=1,
        check=_plausible_bare_value,
        distinctive=False,
    ),
    # A YAML line "password: hunter": the value is a literal, even a bare word,
    # unless it reads as a type (``password: str``, ``token: Optional[str]``, ``secret: SecretStr``).
    _rule(
        "assigned_secret",
        r"(?im)^[ \t]*-?[ \t]*" + _SECRET_NAME + r"[ \t]*:[ \t]*([^\s\[\](){}<>,;|\"'`]{4,200})[ \t]*$",
        group=1,
        check=_literal_value,
        distinctive=False,
    ),
    # Connection-string fields: AccountKey=…; Password=…; SharedAccessKey=…
    _rule(
        "connection_string_secret",
        r"(?i)(?:AccountKey|SharedAccessKey|SharedAccessSignature|Password|Pwd|sig)=([^;\s\"']{4,})",
        group=1,
        check=_plausible_value,
        distinctive=False,
    ),
    # Command flags: --token=…, --password …, -p'…' is left alone (too ambiguous).
    _rule(
        "flag_secret",
        r"(?i)--(?:[a-z\-]{0,30}-)?(?:token|password|passwd|secret|api-key|apikey|auth|client-secret|access-key|"
        r"secret-key)(?:=|[ \t]+)([\"'][^\"'\n]{3,}[\"']|[^\s\"'-][^\s\"']{3,})",
        group=1,
        check=_plausible_value,
        distinctive=False,
    ),
    # curl -u user:password, --user user:password
    _rule(
        "flag_secret",
        r"(?:\s-u|--user)[ \t=]+[\"']?[^\s:\"']+:([^\s\"']{3,})",
        group=1,
        distinctive=False,
    ),
    # A token-like value next to a secret word with some other separator (a header, a table cell).
    _rule(
        "high_entropy_secret",
        r"(?i)" + _SECRET_NAME + r"[\\\"'`\]]*[ \t]*(?:[:=|,>]|->|\s)[ \t\"'`]*([A-Za-z0-9+/=_\-.~]{16,})",
        group=1,
        check=_high_entropy,
        distinctive=False,
    ),
)

#: 13 to 19 digits, maybe grouped by spaces or dashes, starting like a card (3 to 6); Luhn-checked.
CARD_NUMBER = _rule(
    "card_number",
    r"(?<![\d.\-])[3-6]\d{3}(?:[ \-]?\d){9,15}(?![\d\-])",
    check=luhn_valid,
    distinctive=False,
)

#: detect-secrets plugins left out: a public IP address is not a secret, private keys are found
#: whole by :data:`SPECIFIC_RULES` (the plugin matches only the BEGIN line).
_EXCLUDED_PLUGINS = frozenset({"IPPublicDetector", "PrivateKeyDetector"})
#: Plugins whose patterns backtrack over whole lines (``//.+/:_authToken``): run only when the text
#: holds their word.
_PLUGIN_NEEDS = {"NpmDetector": "_authtoken"}


def _kind(secret_type: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", secret_type.lower()).strip("_")


@functools.cache
def detector_rules() -> tuple[Rule, ...]:
    """The regex plugins of detect-secrets, as rules.

    A plugin's pattern may have groups; the first group is taken as the secret when it holds at
    least 8 characters (a value after its keyword), else the whole match (the group was a prefix,
    such as ``ghp`` of a GitHub token).
    """
    from detect_secrets import plugins
    from detect_secrets.plugins.base import RegexBasedDetector

    rules: list[Rule] = []
    for module_info in sorted(pkgutil.iter_modules(plugins.__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{plugins.__name__}.{module_info.name}")
        for name, plugin in inspect.getmembers(module, inspect.isclass):
            if plugin.__module__ != module.__name__ or name in _EXCLUDED_PLUGINS:
                continue
            if not issubclass(plugin, RegexBasedDetector) or plugin is RegexBasedDetector:
                continue
            kind = _kind(str(plugin.secret_type))
            patterns: Iterable[re.Pattern[str]] = getattr(plugin, "denylist", ())  # typed as a property
            needs = _PLUGIN_NEEDS.get(name, "")
            rules.extend(Rule(kind, pattern, -1, needs=needs) for pattern in patterns)
    return tuple(rules)
