"""The names of the four modules of run records under one import, for code written
before they were apart; new code imports the module that does the job:

* :mod:`experiments.rundir`: a run directory's life (where a run writes, prepare,
  begin, clear, the snapshots and their agreement across processes);
* :mod:`experiments.metrics`: every number read off a log (best / final accuracy,
  checkpoints, steps to an accuracy or an FID);
* :mod:`experiments.verdict`: the verdict on a run (status, the dataset it stands for,
  comparability to the paper and with other runs);
* :mod:`experiments.runs`: reading runs back (each assessed once), ``summary.json``.

Nothing is defined here.
"""
from experiments.metrics import (  # noqa: F401
    BATCH_ACC, FID_KEY, TEST_ACC, TEST_LOSS, best_accuracy, checkpoint_epoch,
    classifier_fields, final_accuracy, final_loss, fid_curve, interpolated_steps_to_fid,
    lowest_fid, max_accuracy_at, steps_to_accuracy, steps_to_fid)
from experiments.rundir import (  # noqa: F401
    LEFTOVERS, RESUME_IGNORED, RUN_FILES, RUN_FOLDERS, RUNS_ROOT, SNAPSHOT_RE, RunError,
    RunInterrupted, Start, begin, clear_leftovers, clear_run, complete_snapshots,
    describe_differences, load_snapshot, prepare_run, rank_file, read_json, resume_advice,
    run_dir, snapshots, stored_config, write_config, write_json)
from experiments.runs import Run, assess, find_runs, judged, summarize  # noqa: F401
from experiments.verdict import (  # noqa: F401
    ALLOWED_OVERRIDES, FINISHED, INTERRUPTED, NOT_STARTED, OWN_DATASET_NAMES, OWN_DATASETS,
    ROW_KEYS, ROW_SETTINGS, Assessment, _setting_reasons, cohort, run_status, stands_for)
