"""Rerun a table of the paper and print our numbers beside the paper's.

    python scripts/reproduce.py table2 --dataset cifar10 [--rows BN-2,MN-2]
        [--preset smoke] [--device 0] [--seeds 3] [--data-dir DIR] [--download]
    python scripts/reproduce.py table3 --dataset cifar100   # from finished table2 runs
    python scripts/reproduce.py densenet --depth 40|100     # best test error, Sec. 4.4
    python scripts/reproduce.py dcgan [--inception-weights NPZ]   # FID, Sec. 4.5

Each row is ``configs/<table>/<dataset>/<row>.yaml``; each (row, seed) trains into its
own run directory (``results/runs/...``, smoke runs under ``results/runs/smoke/``).  A
finished run is not trained again (``--force`` does); an interrupted one resumes from
its latest snapshot.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import train  # noqa: E402  (imports mixnorm._compat first)
from experiments import compare, config as config_lib, paper, records  # noqa: E402

# Tables computed from the runs of another table's experiment.
DERIVED = {name: paper.load(name).get('settings_from') for name in paper.available()
           if name.startswith('table')}


def row_configs(table, dataset):
    folder = os.path.join(config_lib.CONFIG_ROOT, table, dataset)
    if not os.path.isdir(folder):
        tables = sorted(d for d in os.listdir(config_lib.CONFIG_ROOT)
                        if d.startswith('table'))
        raise SystemExit('no configs for %s on %s (looked in %s); tables with configs: %s'
                         % (table, dataset, folder, ', '.join(tables)))
    return sorted((f[:-5], os.path.join(folder, f)) for f in os.listdir(folder)
                  if f.endswith('.yaml') and f != 'base.yaml')


def run_rows(args, experiment):
    rows = row_configs(experiment, args.dataset)
    if args.rows:
        wanted = args.rows.split(',')
        unknown = sorted(set(wanted) - {r for r, _ in rows})
        if unknown:
            raise SystemExit('unknown row(s) %s for %s/%s; rows: %s' % (
                ', '.join(unknown), experiment, args.dataset, ', '.join(r for r, _ in rows)))
        rows = [(r, p) for r, p in rows if r in wanted]
    summaries = []
    for row, path in rows:
        for seed in range(args.seed0, args.seed0 + args.seeds):
            cfg = config_lib.load_config(path, args.preset, train.config_overrides(args) +
                                         ['train.seed=%d' % seed] +
                                         (['data.dataset=synthetic'] if args.synthetic else []))
            out = records.run_dir(cfg, root=args.runs_root)
            done = os.path.join(out, 'summary.json')
            if os.path.exists(done) and records.read_json(done).get('finished') \
                    and not args.force:
                print('== %s %s seed %d: finished run in %s (--force to retrain)'
                      % (experiment, row, seed, out))
                continue
            print('== %s %s %s seed %d -> %s' % (experiment, args.dataset, row, seed, out),
                  flush=True)
            summaries.append(train.run(cfg, out=out, device=args.device, resume='auto',
                                       progress=not args.no_progress))
    return summaries


def densenet_report(args):
    """Best test error of BN-L<depth> and MN-L<depth> beside the paper's (Sec. 4.4)."""
    prow = paper.value('sections', 'cifar100', 'densenet_L%d' % args.depth)
    data = 'synthetic' if args.synthetic else 'cifar100'
    runs = records.find_runs(args.runs_root, experiment='densenet', dataset=data,
                             config_dataset='cifar100')
    print('\nDenseNet-%d on CIFAR-100, best test error (%%): ours beside the paper\'s '
          '(Sec. 4.4, %s)' % (args.depth, paper.load('sections')['source']))
    print('%-8s %-10s %-7s %-7s %s' % ('model', 'ours', 'seeds', 'paper', 'status'))
    for model, key in (('BN', 'bn_best_test_error'), ('MN', 'mn_best_test_error')):
        group = [r for r in runs if r.config['row'] == '%s-L%d' % (model, args.depth)
                 and r.summary]
        errs = [100 - r.summary['best_test_accuracy'] for r in group
                if r.summary.get('best_test_accuracy') is not None]
        mean = sum(errs) / len(errs) if errs else None
        status = compare._status(all(r.summary.get('comparable_to_paper') for r in group),
                                 group) if group else 'no run'
        print('%-8s %-10s %-7d %-7.2f %s' % (model, '%.2f' % mean if mean is not None
                                             else '—', len(errs), prow[key], status))


def dcgan(args):
    """Train DCGAN-BN and DCGAN-MN (Sec. 4.5) and print FIDs beside the paper's."""
    from experiments import gan
    sets = train.config_overrides(args) + (['data.dataset=synthetic'] if args.synthetic
                                           else [])
    if args.inception_weights:
        sets.append('gan.fid.weights=%s' % os.path.abspath(args.inception_weights))
    if args.no_fid:
        sets.append('gan.fid.enabled=false')
    folder = os.path.join(config_lib.CONFIG_ROOT, 'dcgan', 'cifar10')
    dirs = []
    for name in ('bn', 'mn'):
        cfg = gan.load_config(os.path.join(folder, name + '.yaml'), args.preset, sets)
        out = records.run_dir(cfg, root=args.runs_root)
        dirs.append(out)
        done = os.path.join(out, 'summary.json')
        if os.path.exists(done) and records.read_json(done).get('finished') \
                and not args.force:
            print('== dcgan %s: finished run in %s (--force to retrain)' % (name, out))
            continue
        print('== dcgan %s -> %s' % (name, out), flush=True)
        gan.run(cfg, out=out, device=args.device, resume='auto',
                progress=not args.no_progress)
    return gan.compare_dcgan(*dirs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('table', help='table2 ... table6, densenet or dcgan')
    p.add_argument('--dataset', choices=['cifar10', 'cifar100'],
                   help='the dataset of the table (required for tables)')
    p.add_argument('--depth', type=int, choices=[40, 100], default=40,
                   help='DenseNet depth (densenet only)')
    p.add_argument('--rows', help='comma-separated row names (default: all)')
    p.add_argument('--seeds', type=int, default=1, help='number of seeds per row')
    p.add_argument('--seed0', type=int, default=0, help='first seed')
    p.add_argument('--force', action='store_true', help='retrain finished runs')
    p.add_argument('--runs-root', default=records.RUNS_ROOT)
    p.add_argument('--no-train', action='store_true', help='only print the comparison')
    p.add_argument('--synthetic', action='store_true',
                   help='train on generated data instead of the dataset (offline demo; '
                        'records and tables mark such runs NOT COMPARABLE)')
    p.add_argument('--inception-weights', metavar='NPZ',
                   help='FID Inception weights (dcgan only; see experiments/fid.py)')
    p.add_argument('--no-fid', action='store_true', help='dcgan: train without FID')
    train.add_run_arguments(p)
    args = p.parse_args(argv)
    table = args.table
    try:
        if table == 'dcgan':
            return dcgan(args)
        if table == 'densenet':
            args.dataset = args.dataset or 'cifar100'
            args.rows = args.rows or 'BN-L%d,MN-L%d' % (args.depth, args.depth)
            if not args.no_train:
                run_rows(args, 'densenet')
            return densenet_report(args)
        if not args.dataset:
            p.error('--dataset is required for %s' % table)
        experiment = DERIVED.get(table) or table
        if not args.no_train and experiment == table:
            run_rows(args, experiment)
        data = 'synthetic' if args.synthetic else args.dataset
        runs = records.find_runs(args.runs_root, experiment=experiment, dataset=data,
                                 config_dataset=args.dataset)
        if not runs:
            raise SystemExit('no runs of %s on %s under %s: run `scripts/reproduce.py %s '
                             '--dataset %s` first' % (experiment, args.dataset,
                                                      args.runs_root, experiment,
                                                      args.dataset))
        recs = compare.compare(table, runs, paper_dataset=args.dataset)
    except (config_lib.ConfigError, ValueError) as e:
        raise SystemExit('error: %s' % e)
    except FileNotFoundError as e:
        raise SystemExit('error: %s\nOffline demo on generated data (not comparable to the '
                         'paper): add --synthetic, or `make reproduce DATA=synthetic`.' % e)
    print('\n%s on %s: ours beside the paper\'s (%s)' % (
        table, args.dataset, paper.load(table)['source']))
    if compare.table_kind(paper.load(table)) == 'checkpoints':
        print(compare.checkpoint_layout(recs))
    else:
        print(compare.to_text(recs))
    return recs


if __name__ == '__main__':
    main()
