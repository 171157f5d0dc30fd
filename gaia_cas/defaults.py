"""Every default a user can override, in one place: the CLI's help, the nightly job, the library
and the docs all read them from here.

Ages are written as a user would type them (``--grace 1h``): :func:`gaia_cas.retention.parse_age`
reads them.
"""

GRACE = "1h"  # gc never deletes anything younger (git's gc.pruneExpire; design.md, Garbage collection)
LOG_AGE = "90d"  # gc deletes gaia-cas's own log files older than this
KEEP = 3  # cleanup keeps the newest N versions (the old script's "keep the last 3")
LOCK_TIMEOUT = 30.0  # seconds a writer waits for a lock before one clear error
LINK = "models/{model}/{channel}"  # where a model's links live unless configured (root-relative)
