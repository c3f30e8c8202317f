"""Rerun an experiment of the paper and set our numbers beside the paper's: what
``scripts/reproduce.py`` does, given its parsed arguments.

* a table (``table2`` ... ``table6``): train every row (or ``--rows``) of
  ``configs/<table>/<dataset>/`` for each seed, then print the comparison
  (:mod:`experiments.compare`); a table computed from another table's runs (Table 3
  from Table 2's, ...) only prints;
* ``densenet``: BN-L<depth> and MN-L<depth> on CIFAR-100, then the best test errors;
* ``dcgan``: DCGAN-BN and DCGAN-MN, then the FIDs (:func:`experiments.compare.compare_dcgan`).

Each (row, seed) trains into its own run directory; what happens to one that already
exists (a finished run is kept, an interrupted one resumed, another config refused) is
:func:`experiments.rundir.prepare_run`'s decision, the same as for
``python -m experiments.train``.  Each row prints the time it took.
"""
import contextlib
import os
import time

from experiments import cli
from experiments import compare
from experiments import config as config_lib
from experiments import paper
from experiments import parallel
from experiments import pipeline
from experiments import rundir, runs as run_records, verdict
from experiments import train


def derived_from(table):
    """The experiment whose runs a table is computed from (itself for most tables)."""
    if table not in paper.available():
        return table
    return paper.load(table).get('settings_from') or table


def row_configs(experiment, dataset):
    """[(row, config path)] of ``configs/<experiment>/<dataset>/``."""
    folder = os.path.join(config_lib.CONFIG_ROOT, experiment, dataset)
    if not os.path.isdir(folder):
        have = sorted(d for d in os.listdir(config_lib.CONFIG_ROOT)
                      if os.path.isdir(os.path.join(config_lib.CONFIG_ROOT, d, dataset)))
        raise config_lib.ConfigError(
            'no configs for %s on %s (looked in %s); experiments with %s configs: %s'
            % (experiment, dataset, folder, dataset, ', '.join(have) or 'none'))
    return sorted((f[:-5], os.path.join(folder, f)) for f in os.listdir(folder)
                  if f.endswith('.yaml') and f != config_lib.BASE_NAME)


def select_rows(rows, wanted, where):
    """The ``rows`` named in the comma-separated ``wanted`` (all if empty)."""
    if not wanted:
        return rows
    names = [w for w in wanted.split(',') if w]
    unknown = sorted(set(names) - {r for r, _ in rows})
    if unknown:
        raise config_lib.ConfigError('unknown row(s) %s for %s; rows: %s' % (
            ', '.join(unknown), where, ', '.join(r for r, _ in rows)))
    return [(r, p) for r, p in rows if r in names]


def train_row(run, cfg, out, args, label):
    """Train one (row, seed) with ``run`` (:func:`experiments.train.run` or
    :func:`experiments.gan.run`) unless :func:`~experiments.rundir.prepare_run` keeps
    it; prints what it did and how long it took."""
    par = args.parallel
    cfg = par.record(cfg)
    start = par.decide(lambda: rundir.prepare_run(cfg, out, 'auto', args.force))
    if start.action == 'skip':
        print('== %s: %s' % (label, start.message), flush=True)
        return start.summary
    print('== %s -> %s' % (label, out), flush=True)
    t0 = time.time()
    summary = run(cfg, out=out, device=args.device, progress=not args.no_progress,
                  start=start, par=par)
    print('== %s: %s in %s' % (label, verdict.Assessment.recorded(summary).status,
                               format_duration(time.time() - t0)), flush=True)
    return summary


def format_duration(seconds):
    """``'42 s'``, ``'3 min 05 s'``, ``'2 h 03 min'``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return '%d s' % seconds
    if seconds < 3600:
        return '%d min %02d s' % divmod(seconds, 60)
    return '%d h %02d min' % (seconds // 3600, seconds % 3600 // 60)


def run_rows(args, experiment):
    """Train the rows of ``experiment`` on ``args.dataset`` for ``args.seeds`` seeds."""
    rows = select_rows(row_configs(experiment, args.dataset), args.rows,
                       '%s/%s' % (experiment, args.dataset))
    summaries = []
    for row, path in rows:
        for seed in range(args.seed0, args.seed0 + args.seeds):
            cfg = config_lib.load_config(path, args.preset, pipeline.config_overrides(args) +
                                         ['train.seed=%d' % seed])
            out = rundir.run_dir(cfg, root=args.runs_root)
            summaries.append(train_row(train.run, cfg, out, args, '%s %s %s seed %d' % (
                experiment, args.dataset, row, seed)))
    return summaries


def find_runs(args, experiment, dataset):
    """Our runs of ``experiment`` standing for ``dataset`` (on generated data with
    ``--synthetic``, else on the real data)."""
    return run_records.find_runs(args.runs_root, experiment=experiment,
                             dataset='synthetic' if args.synthetic else dataset,
                             paper_dataset=dataset)


def own_dataset_report(args, experiment):
    """BN beside MN on a real dataset that is not the paper's (Fashion-MNIST): the
    pairs comparable with each other, never with the paper."""
    runs = find_runs(args, experiment, args.dataset)
    recs = compare.compare_pairs(runs, args.dataset, experiment)
    print('\n%s: %s' % (experiment, compare.pairs_heading(args.dataset)))
    print(compare.pairs_to_text(recs) if recs else '(no finished pair of runs)')
    return recs


def densenet_report(args):
    """Best test error of BN-L<depth> and MN-L<depth> beside the paper's (Sec. 4.4)."""
    if args.dataset in verdict.OWN_DATASETS:
        return own_dataset_report(args, 'densenet')
    runs = find_runs(args, 'densenet', 'cifar100')
    recs = compare.compare_densenet(runs, args.depth)
    print('\nDenseNet-%d on CIFAR-100, best test error (%%): ours beside the paper\'s (%s)'
          % (args.depth, paper.load('sections')['source']))
    print(compare.to_text(recs))
    return recs


def densenet(args):
    args.dataset = args.dataset or 'cifar100'
    args.rows = args.rows or 'BN-L%d,MN-L%d' % (args.depth, args.depth)
    if not args.no_train:
        run_rows(args, 'densenet')
    return densenet_report(args)


def dcgan(args):
    """Train DCGAN-BN and DCGAN-MN (Sec. 4.5) and print FIDs beside the paper's."""
    from experiments import gan
    if args.parallel.size > 1 or args.communicator:
        raise config_lib.ConfigError(gan.NOT_PARALLEL)
    sets = pipeline.config_overrides(args) + gan.fid_overrides(args)
    dirs = []
    for name, path in row_configs('dcgan', 'cifar10'):
        cfg = gan.load_config(path, args.preset, sets + ['train.seed=%d' % args.seed0])
        out = rundir.run_dir(cfg, root=args.runs_root)
        dirs.append(out)
        if not args.no_train:
            train_row(gan.run, cfg, out, args, 'dcgan %s seed %d' % (name, args.seed0))
    return compare.compare_dcgan(*dirs)


def table(args):
    """Train a table's rows (unless it is computed from another table's runs) and print
    our numbers beside the paper's."""
    name = args.table
    if compare.table_kind_or_none(name) is None:
        raise cli.UsageError('no table %r to reproduce; tables: %s, or densenet, dcgan%s'
                             % (name, ', '.join(compare.run_tables()),
                                ' (Table 7 is timed by bench/table7.py)'
                                if name == 'table7' else ''))
    if not args.dataset:
        raise cli.UsageError('--dataset cifar10|cifar100|fashion-mnist is needed for %s'
                             % name)
    experiment = derived_from(name)
    if not args.no_train and experiment == name:
        run_rows(args, experiment)
    runs = find_runs(args, experiment, args.dataset)
    if not runs:
        raise config_lib.ConfigError(
            'no runs of %s on %s under %s: run `scripts/reproduce.py %s --dataset %s%s` '
            'first' % (experiment, args.dataset, args.runs_root, experiment, args.dataset,
                       ' --synthetic' if args.synthetic else ''))
    if args.dataset in verdict.OWN_DATASETS:     # real images, but not the paper's
        return own_dataset_report(args, experiment)
    recs = compare.compare(name, runs, paper_dataset=args.dataset)
    print('\n%s on %s: ours beside the paper\'s (%s)' % (
        name, args.dataset, paper.load(name)['source']))
    if compare.table_kind(paper.load(name)) == 'checkpoints':
        print(compare.checkpoint_layout(recs))
    else:
        print(compare.to_text(recs))
    return recs


def reproduce(args):
    """Dispatch on ``args.table``: a table, ``densenet`` or ``dcgan``.  With
    ``--communicator`` under ``mpiexec`` every process runs the same rows and rank 0
    prints and writes (:mod:`experiments.parallel`)."""
    args.parallel = parallel.create(args.communicator)
    quiet = open(os.devnull, 'w') if not args.parallel.writer else None
    with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
        if args.table == 'dcgan':
            return dcgan(args)
        if args.table == 'densenet':
            return densenet(args)
        return table(args)
