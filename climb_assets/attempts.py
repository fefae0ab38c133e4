"""Bounded attempts for the sensors' work: Dagster never launches a run key twice, failed or not, so a sensor that
re-requests the same key after a failure stalls silently. Every attempt gets its own key instead, and after
``MAX_ATTEMPTS`` failures the work is reported where the UI shows it."""

import json
from collections import defaultdict

import dagster as dg

MAX_ATTEMPTS = 3  # failed runs of one piece of work before the sensor stops and reports it
ATTEMPT_TAG = "climb/attempt_of"  # on every attempt's run: the stable key of the work it attempts


def bounded_attempts(context: dg.SensorEvaluationContext, wanted: list[dg.RunRequest], asset: str) -> dg.SensorResult:
    """``wanted`` (each ``run_key`` a stable name for one piece of work) as fresh attempts. Dagster never launches a
    run key twice, failed or not, so each attempt gets its own key; none while one is queued or running, none once
    one succeeded, and after MAX_ATTEMPTS failures the work is reported instead (skip reason, an observation on
    ``asset`` once, and the cursor's ``gave_up``) until the cause is fixed and the job run by hand."""
    runs = defaultdict(list)
    for run in context.instance.get_runs(dg.RunsFilter(tags={ATTEMPT_TAG: [r.run_key for r in wanted]})):
        runs[run.tags[ATTEMPT_TAG]].append(run)
    requests, waiting, gave_up = [], [], {}
    for request in wanted:
        attempts = runs[request.run_key]
        failed = sorted(run.run_id for run in attempts if run.is_failure_or_canceled)
        if not all(run.is_finished for run in attempts):
            waiting.append(request.run_key)
        elif any(run.is_success for run in attempts):
            continue
        elif len(failed) >= MAX_ATTEMPTS:
            gave_up[request.run_key] = (request, failed)
        else:
            requests.append(dg.RunRequest(
                run_key=f"{request.run_key}:attempt-{len(failed) + 1}", job_name=request.job_name,
                partition_key=request.partition_key, tags={**request.tags, ATTEMPT_TAG: request.run_key},
            ))  # fmt: skip
    reported = json.loads(context.cursor).get("gave_up", {}) if context.cursor else {}
    events = [
        dg.AssetObservation(asset_key=asset, partition=request.partition_key, metadata={
            "sensor_gave_up": key, "failed_runs": failed, "how_to_clear": clear_hint(request.job_name)})
        for key, (request, failed) in gave_up.items() if key not in reported
    ]  # fmt: skip
    reasons = [f"gave up on {key} after {len(failed)} failed runs ({', '.join(failed)}): "
               f"{clear_hint(request.job_name)}" for key, (request, failed) in list(gave_up.items())[:5]]
    reasons += [f"waiting for the run in progress for {key}" for key in waiting[:5]]  # fmt: skip
    return dg.SensorResult(
        run_requests=requests,
        skip_reason=None if requests else "; ".join(reasons) or "nothing to run",
        asset_events=events,
        cursor=json.dumps({"gave_up": {key: failed for key, (_, failed) in gave_up.items()}}, sort_keys=True),
    )


def clear_hint(job_name: str) -> str:
    return (f"fix the cause (see the failed runs), then launch {job_name} yourself, or delete those runs to let "
            f"the sensor try {MAX_ATTEMPTS} more times")  # fmt: skip
