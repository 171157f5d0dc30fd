"""Time and identity, read in one place: who is acting, and when.

Every recorded moment (a version's ``created_at``, a history row's ``at``, retention's and gc's
ages) comes from :func:`now`, an aware local time, and is written by :func:`stamp`. The
deployment id and the log file names share one format, :data:`DEPLOYMENT_ID_FORMAT`, the old
script's ``YYYYmmdd_HHMMSS``. Nothing is imported that a command recording no time would pay for.
"""

from __future__ import annotations

import os

DEPLOYMENT_ID_FORMAT = "%Y%m%d_%H%M%S"


def now():
    """The current moment as an aware datetime in the machine's local zone."""
    from datetime import datetime  # not at import: commands that record no time never need it

    return datetime.now().astimezone()


def stamp(moment) -> str:
    """How a moment is stored: ISO 8601 with its offset, to the second."""
    return moment.isoformat(timespec="seconds")


def deployment_id(moment) -> str:
    return moment.strftime(DEPLOYMENT_ID_FORMAT)


def who() -> tuple[str, str]:
    """(user, host) of the process, for the history and the log."""
    # getpass.getuser()'s own order, without importing getpass (and termios) when the
    # environment answers, as it almost always does.
    user = next(filter(None, map(os.environ.get, ("LOGNAME", "USER", "LNAME", "USERNAME"))), None)
    if user is None:
        import pwd

        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:  # no passwd entry and no $USER: fall back to the uid
            user = str(os.getuid())
    return user, os.uname().nodename  # gethostname(), without the 3 ms import of socket
