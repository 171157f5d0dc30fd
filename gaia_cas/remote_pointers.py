"""Pointers on a remote: move its current (rollback) or a channel (promote) by compare-and-swap,
from any machine -- the operator's emergency rollback needs no local copy of the model, and
nothing local changes.

Each move is decided again on every attempt against the manifest read (``storage.update``), and
recorded in the remote's history as a local move would be (``rollback``; ``promote`` with
``details["channel"]``). That row is the pointer's latest change: a store that has not pulled
since can no longer move the pointer back by a push (:mod:`gaia_cas.transfer`).
"""

from __future__ import annotations

import os
from collections import namedtuple

from . import clock
from .errors import CorruptionError, InvalidInputError
from .manifest import record
from .names import check_text
from .transfer import local_name, open_remote


class RemoteRollback(namedtuple("RemoteRollback", "model version previous unchanged remote channel",
                                defaults=("current",))):
    __slots__ = ()

    def to_json(self) -> dict:
        doc = {"model": self.model, "version": self.version, "previous": self.previous,
               "unchanged": self.unchanged, "remote": self.remote}
        if self.channel != "current":
            doc["channel"] = self.channel
        return doc


def rollback_remote(repo, name: str, selector: str, *, remote: str | None = None,
                    reason: str | None = None) -> RemoteRollback:
    """Move the remote's current to an existing version by compare-and-swap."""
    return _move(repo, name, selector, "current", remote, reason)


def promote_remote(repo, name: str, selector: str, channel: str, *, remote: str | None = None,
                   reason: str | None = None) -> RemoteRollback:
    """Point the remote's channel at an existing version by compare-and-swap ('current' is a
    rollback). The remote's channel has no link: link paths belong to the machines that pull."""
    if channel != "current":
        from .manifest import check_channel_name

        check_channel_name(channel)
    return _move(repo, name, selector, channel, remote, reason)


def _move(repo, name: str, selector: str, channel: str, remote: str | None, reason: str | None) -> RemoteRollback:
    remote_cfg, _, rmanifests = open_remote(repo, remote)
    name = local_name(repo, name)
    check_text(reason, "--reason")
    from .s3 import OPERATION

    user, host = clock.who()
    outcome = {}
    operation = os.urandom(8).hex()  # one per move: a retry whose first swap landed finds it there

    def change(rm) -> None:
        done = next((e for e in rm.events_newest_first() if e.details.get(OPERATION) == operation), None)
        if done is not None:  # our swap landed, its answer was lost, and someone wrote since: done
            outcome.update(version=done.after, previous=done.before, moved=True)
            return
        target = repo.select(rm, selector)  # decided again on every attempt, against the manifest read
        if target.broken:
            raise CorruptionError(f"version {target.version} of '{name}' on remote '{remote_cfg.name}' is marked "
                                  f"broken; it cannot be made {channel}")
        at = clock.stamp(clock.now())
        if channel == "current":
            outcome.update(version=target.version, previous=rm.current)
            if rm.current == target.version:
                return
            left = rm.find(rm.current) if rm.current else None
            details = {"from_tree": left.tree} if left is not None else {}
            record(rm, "rollback", version=target.version, before=rm.current, after=target.version, at=at,
                   user=user, host=host, reason=reason, details={**details, OPERATION: operation})
            rm.current = target.version
            return
        old = rm.channels.get(channel)
        before = old["version"] if old else None
        outcome.update(version=target.version, previous=before)
        if before == target.version:
            return
        rm.channels[channel] = {"version": target.version, "link": old["link"] if old else None}
        record(rm, "promote", version=target.version, before=before, after=target.version, at=at, user=user,
               host=host, reason=reason, details={"channel": channel, OPERATION: operation})

    rmanifests.update(name, change)
    return RemoteRollback(name, outcome["version"], outcome["previous"],
                          not outcome.get("moved") and outcome["version"] == outcome["previous"], remote_cfg.name, channel)


def check_no_link(link) -> None:
    if link is not None:
        raise InvalidInputError("--link is a local setting: a remote's channel has no link (set it where the "
                                "channel is pulled, with 'gaia-cas promote MODEL VERSION --channel C --link PATH')")
