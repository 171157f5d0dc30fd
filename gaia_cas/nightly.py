"""The nightly job cron runs: retention for every model, gc, verification, one summary.

Each step runs even if an earlier one failed (gc is safe on its own, verification is useful
most when something went wrong); the exit status is 1 if any step failed, so cron mails it.
"""

from __future__ import annotations

import sys

from .errors import GaiaCasError

STEP_ERRORS = (GaiaCasError, OSError)  # a step that fails this way is reported; the next one still runs


def run(repo, *, grace, log_age, dry_run=False, verify_sample=None,
        steps: list | None = None) -> tuple[bool, list[str]]:
    """Run the three steps; returns (all succeeded, one sentence per step). ``steps``, when
    given, receives one record per sentence: {"step", "ok", "summary"} and the step's figures."""
    ok = True
    summary = []
    steps = [] if steps is None else steps

    def note(step: str, passed: bool, sentence: str, **figures) -> None:
        nonlocal ok
        ok = ok and passed
        summary.append(sentence)
        steps.append({"step": step, "ok": passed, "summary": sentence, **figures})

    try:
        fixed = [] if dry_run else repo.sync_links()
        if fixed:
            note("links", True, f"Regenerated stale links of {', '.join(fixed)}.", regenerated=fixed)
    except STEP_ERRORS as exc:
        note("links", False, f"Link check FAILED: {exc}.", error=str(exc))

    try:
        plans = repo.cleanup(None, dry_run=dry_run, reason="nightly retention")
        removed = {p.model: (p.remove if dry_run else p.removed) or [] for p in plans}
        total = sum(len(v) for v in removed.values())
        detail = "; ".join(f"{m}: {', '.join(v)}" for m, v in removed.items() if v)
        verb = "would remove" if dry_run else "removed"
        note("retention", True, f"Retention {verb} {total} version{'s' if total != 1 else ''} across {len(plans)} "
             f"model{'s' if len(plans) != 1 else ''}" + (f" ({detail})." if detail else "."),
             removed={m: list(v) for m, v in removed.items()})
        for plan in plans:
            if plan.error:
                note("retention", False, f"Retention FAILED for {plan.model}: {plan.error}.", model=plan.model,
                     error=str(plan.error))
    except STEP_ERRORS as exc:
        note("retention", False, f"Retention FAILED: {exc}.", error=str(exc))

    try:
        plan, result = repo.gc(grace=grace, log_age=log_age, dry_run=dry_run)
        if result is None:
            note("gc", True, f"gc would free {plan.bytes / 1048576:.2f} MB ({len(plan.doomed)} entries).",
                 bytes=plan.bytes, entries=len(plan.doomed))
        else:
            note("gc", True, f"gc freed {result.bytes_freed / 1048576:.2f} MB "
                 f"({sum(result.deleted.values())} entries deleted, {plan.reachable_objects} objects in use).",
                 bytes=result.bytes_freed, entries=sum(result.deleted.values()),
                 reachable_objects=plan.reachable_objects)
    except STEP_ERRORS as exc:
        note("gc", False, f"gc FAILED and deleted nothing it had not planned: {exc}.", error=str(exc))

    try:
        report = repo.verify(sample=verify_sample)
        if report.ok:
            note("verify", True, f"Verify checked {report.checked_objects} objects: no problems.",
                 checked_objects=report.checked_objects, problems=[])
        else:
            note("verify", False, f"Verify found {len(report.problems)} problem(s): "
                 + "; ".join(str(p) for p in report.problems[:5]) + ".",
                 checked_objects=report.checked_objects, problems=[str(p) for p in report.problems])
    except STEP_ERRORS as exc:
        note("verify", False, f"Verify FAILED: {exc}.", error=str(exc))
    return ok, summary


def main(argv: list[str] | None = None, default_root: str | None = None) -> int:
    from .parser import build_nightly_parser

    args = build_nightly_parser().parse_args(argv)
    try:
        from .repo import Repository
        from .retention import parse_age

        grace, log_age = parse_age(args.grace), parse_age(args.log_age)
        repo = Repository.open(args.root, default_root=default_root, lock_timeout=args.lock_timeout)
    except STEP_ERRORS as exc:
        print(f"gaia-cas-nightly: error: {exc}", file=sys.stderr)
        if args.json:
            _print_json({"ok": False, "root": None, "dry_run": args.dry_run, "steps": [], "error": str(exc)})
        return 1
    from .errors import Terminated
    from .interrupts import stop_on_signals

    restore_signals = stop_on_signals()  # a scheduler's SIGTERM stops the job like Ctrl-C, in one line
    steps: list = []
    try:
        ok, summary = run(repo, grace=grace, log_age=log_age, dry_run=args.dry_run, verify_sample=args.verify_sample,
                          steps=steps)
    except Terminated as exc:
        print(f"gaia-cas-nightly: terminated by {exc.name}", file=sys.stderr)
        return 128 + exc.signum
    finally:
        restore_signals()
    paragraph = f"gaia-cas nightly on {repo.root}: " + " ".join(summary)
    if not args.dry_run:
        repo.oplog.write("gaia_cas.nightly", paragraph, level="INFO" if ok else "ERROR")
    if args.json:
        _print_json({"ok": ok, "root": str(repo.root), "dry_run": args.dry_run, "steps": steps})
    else:
        print(paragraph)
    return 0 if ok else 1


def _print_json(document: dict) -> None:
    import json

    print(json.dumps(document, indent=2))
