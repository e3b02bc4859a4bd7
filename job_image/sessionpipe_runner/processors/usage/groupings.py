"""The vocabulary of the usage reports: groupings and the names their JSON uses (shared by the
queries in :mod:`.report` and the tables in :mod:`.text`)."""

from __future__ import annotations

#: For each grouping: the key's SQL expressions (over the call's local time ``lt``), the JSON list
#: name, and the JSON names of the key's parts.
GROUPINGS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "day": (("strftime(lt, '%Y-%m-%d')",), "daily", ("date",)),
    "week": (("week_start",), "weekly", ("week",)),
    "month": (("strftime(lt, '%Y-%m')",), "monthly", ("month",)),
    "session": (("session_id", "project", "user_name"), "sessions", ("sessionId", "projectPath", "user")),
    "user": (("user_name",), "users", ("user",)),
    "project": (("project",), "projects", ("project",)),
    "model": (("model_label",), "models", ("model",)),
}
#: Models that are not models: Claude Code's local placeholder for calls it never made.
NOT_A_MODEL = frozenset({"<synthetic>"})
#: Week days as ``--start-of-week`` names them, in DuckDB's ``dayofweek`` numbering (Sunday is 0).
WEEK_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
#: The JSON key listing models counted at $0 for want of a price (present only when there are some).
UNPRICED_KEY = "unpricedModels"
#: Groupings listed in time order rather than by cost.
BY_TIME = ("day", "week", "month")
TOKEN_FIELDS = ("inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens")


def token_fields(tokens: list[int]) -> dict[str, int]:
    """The four token counts under their JSON names, and their sum as ``totalTokens``."""
    values = dict(zip(TOKEN_FIELDS, tokens, strict=True))
    values["totalTokens"] = sum(tokens)
    return values
