"""Keep the response within what SSM returns of a command's standard output.

SSM Run Command's `GetCommandInvocation` returns at most 24,000 characters of standard
output (`StandardOutputContent`); anything beyond is cut, and a cut JSON document is no
answer at all. So the response is shrunk step by step until it fits, the job impacts first
(they are what grows with the work on a node), always keeping each job's id, verdict and
counts:

1. fewer listed tasks and actors per job, fewer reasons;
2. no listed tasks and actors, one shortened reason per job;
3. whole jobs left out, `will-recover` ones before `at-risk` and `lost` ones, largest result
   first;
   the result's message then says how many were left out.

A response that is too long without any impacted jobs (very many notices) is printed as it
is, with a warning on stderr.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

log = logging.getLogger(__name__)

#: SSM's StandardOutputContent limit, less a margin for the newline and safety.
MAX_RESPONSE_CHARS = 24_000 - 100
#: (listed tasks and actors, reasons, characters per reason) per shrinking step.
_STEPS: tuple[tuple[int, int, int], ...] = ((10, 5, 300), (3, 3, 200), (0, 1, 160))

JsonObject = dict[str, Any]


def size_of(document: JsonObject) -> int:
    """Characters as `python -m ray_hooks` prints the document (json.dumps defaults)."""
    return len(json.dumps(document))


def fit_response(document: JsonObject, limit: int = MAX_RESPONSE_CHARS) -> JsonObject:
    """The document itself when it fits; otherwise a shrunk copy (see the module docstring)."""
    if size_of(document) <= limit or not document.get("results"):
        return document
    fitted = copy.deepcopy(document)
    for listed, reasons, reason_chars in _STEPS:
        for job in _jobs(fitted):
            _shrink(job, listed, reasons, reason_chars)
        if size_of(fitted) <= limit:
            return fitted
    _leave_out_jobs(fitted, limit)
    if size_of(fitted) > limit:
        log.warning(
            "response is %d characters, more than SSM returns (%d), even without job impacts",
            size_of(fitted),
            limit,
        )
    return fitted


def _jobs(document: JsonObject) -> list[JsonObject]:
    return [job for result in document["results"] for job in result.get("impacted_jobs", [])]


def _shrink(job: JsonObject, listed: int, reasons: int, reason_chars: int) -> None:
    for name in ("tasks", "actors"):
        if name in job:
            job[name] = job[name][:listed]
    if "reasons" in job:
        kept = [_shorten(reason, reason_chars) for reason in job["reasons"][:reasons]]
        if len(job["reasons"]) > reasons and reasons > 1:
            kept[-1] = f"+{len(job['reasons']) - reasons + 1} more reason(s)"
        job["reasons"] = kept


def _shorten(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _leave_out_jobs(document: JsonObject, limit: int) -> None:
    """Drop jobs, will-recover first, from the results with the most jobs, until it fits."""
    messages: dict[int, str] = {}
    counts: dict[int, int] = {}
    while (excess := size_of(document) - limit) > 0:
        dropped = 0
        while dropped < excess:
            results = document["results"]
            with_jobs = [n for n, result in enumerate(results) if result.get("impacted_jobs")]
            if not with_jobs:
                return
            index = max(with_jobs, key=lambda n: len(results[n]["impacted_jobs"]))
            result = results[index]
            jobs = result["impacted_jobs"]
            recovering = [n for n, job in enumerate(jobs) if job.get("verdict") == "will-recover"]
            dropped += len(json.dumps(jobs.pop(recovering[-1] if recovering else -1))) + 2
            messages.setdefault(index, str(result.get("message", "")))
            counts[index] = counts.get(index, 0) + 1
            result["message"] = (
                f"{messages[index]}; {counts[index]} impacted job(s) left out "
                "to fit SSM's output limit"
            )
