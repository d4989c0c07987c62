"""Collections: many images, folder trees, runs that survive a kill, several processes.

One run (:func:`plan`, :func:`check`, :func:`run`):

1. :func:`plan` lists the inputs (folders flat, or with ``recursive`` their whole tree, the
   sub-folders mirrored in the output folder) and names every output (:mod:`vdsr.io.outputs`). It
   writes nothing. Hidden files, non-images, links to nowhere or in a loop, links that leave the
   input folder (with ``recursive``; not followed) and this run's own outputs found among the
   inputs (``OUT`` inside ``IN``) are skipped and counted in :attr:`Plan.skipped`.
2. :func:`check` refuses what cannot work before anything is loaded: two inputs writing one
   output, an output folder that cannot be created or written, a single output file that
   exists (unless replacing is asked) or is the input.
3. :func:`run` creates the folders, removes the temp files a killed run left beside its outputs,
   skips the outputs that are there already (complete: every write is atomic), unless
   ``overwrite``, and upscales the rest, in this process, in ``workers`` processes, or on a Ray
   cluster (:mod:`vdsr.batch.ray_jobs`). Each input gets a row in the folder's JSON-lines manifest
   (:data:`MANIFEST`): output, sizes, seconds, how it ran, status and error. A bad file is a
   ``failed`` row; the run goes on.

Rows are plain dicts (:data:`ROW_FIELDS`), the same from every way of running, so a rerun reads
what any earlier run recorded.

The rooms: :mod:`~vdsr.batch.planning` (what will be done), :mod:`~vdsr.batch.jobs` (one image,
its row, the manifest), :mod:`~vdsr.batch.processes` (worker processes), :mod:`~vdsr.batch.running`
(a run from start to end), :mod:`~vdsr.batch.ray_jobs` (the same on Ray).
"""

from vdsr.batch.jobs import (
    Events,
    NoEvents,
    Summary,
    error_fields,
    job_row,
    read_manifest,
    upscale_job,
)
from vdsr.batch.planning import (
    MANIFEST,
    MAX_ATTEMPTS,
    ROW_FIELDS,
    SKIP_REASONS,
    Job,
    Plan,
    Settings,
    check,
    describe_skipped,
    plan,
    row_settings,
)
from vdsr.batch.running import Remote, run

__all__ = ["MANIFEST", "MAX_ATTEMPTS", "ROW_FIELDS", "SKIP_REASONS", "Events", "Job", "NoEvents", "Plan",
           "Remote", "Settings", "Summary", "check", "describe_skipped", "error_fields", "job_row", "plan",
           "read_manifest", "row_settings", "run", "upscale_job"]
