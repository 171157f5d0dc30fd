"""Questions asked of a model's history (the manifest's append-only list of events).

A rollback is a decision about content, not only a pointer move: the team said "not this". A
scheduled ``deploy both`` that finds the same bytes in the training folder the next night must
not quietly make them current again, so a deploy asks :func:`rolled_back_from` first (see
docs/design.md, "Rollbacks are decisions").
"""

from __future__ import annotations


def rolled_back_from(manifest, tree: str):
    """``(version, event)`` when ``tree`` is the content of a version that a rollback moved
    current away from and nothing since chose that content again; otherwise None.

    Walks the history from the newest event. Content is chosen again by a deploy or import of
    it (a forced deploy records its tree, so this holds after that version is cleaned up) or by
    a rollback to it. Rollback rows record the tree they left (``details["from_tree"]``), so the
    decision outlives a cleanup of the rolled-back version. The versions holding ``tree`` are
    found once, so the walk compares numbers instead of decoding a version per event.
    """
    holding = {v.version for v in manifest.versions if v.tree == tree}
    for event in manifest.events_newest_first():
        if event.action in ("deploy", "import", "rollback") and event.version is not None:
            if event.details.get("tree") == tree or event.version in holding:
                return None
        if event.action == "rollback" and event.before is not None:
            if event.details.get("from_tree") == tree or (
                    "from_tree" not in event.details and event.before in holding):
                return event.before, event
    return None


def describe_rollback(model: str, version: str, event) -> str:
    who = f"{event.user}@{event.host}" if event.user and event.host else (event.user or "someone")
    why = f", reason {event.reason!r}" if event.reason else ""
    return (f"refusing to deploy '{model}': this content is version {version}, which {who} rolled back "
            f"from at {event.at} (to {event.version}{why}); --force deploys it anyway")
