"""Print our runs beside the paper's numbers.

    python scripts/compare.py [RUN_DIR_OR_ROOT ...] [--table table2] [--dataset cifar10]
        [--format text|markdown|csv] [--out FILE]

Every table of ``results/paper/`` that has runs is shown (or only ``--table``): the
mean ± std over seeds (— for one seed) and the number of seeds of our runs, the paper's
value and the difference; step tables (3, 5, 6) add the steps to the BN reference's
maximum accuracy and the reduction in percent.  Runs that are not comparable to the
paper (:attr:`experiments.runs.Run.assessment`) are marked NOT COMPARABLE with the
reasons; a text table says the reasons once above it and fits 120 columns.
Runs on Fashion-MNIST (real images, not the paper's) are never set beside the paper's
numbers: each MN row is shown beside its BN row trained the same way
(:func:`experiments.compare.compare_pairs`), with both test accuracies.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import cli, compare, paper, rundir, verdict  # noqa: E402
from experiments import runs as run_records  # noqa: E402


@cli.entry_point
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('paths', nargs='*', default=[rundir.RUNS_ROOT],
                   help='run directories or folders holding them (default results/runs)')
    p.add_argument('--table', action='append', help='only these tables (repeatable)')
    p.add_argument('--dataset', choices=['cifar10', 'cifar100', 'fashion-mnist'],
                   help='compare against this dataset of the paper (needed for smoke runs '
                        'on synthetic data); fashion-mnist: only its BN-vs-MN pairs')
    p.add_argument('--format', choices=['text', 'markdown', 'csv'], default='text')
    p.add_argument('--out', help='write to this file instead of stdout')
    args = p.parse_args(argv)
    known = compare.run_tables()
    unknown = [t for t in args.table or [] if t not in known]
    if unknown:
        raise cli.UsageError('no table %s in results/paper/; tables: %s'
                             % (', '.join(map(repr, unknown)), ', '.join(known)))
    runs = []
    for path in args.paths:
        if not os.path.exists(path):
            raise FileNotFoundError('no such run or folder: %s' % path)
        runs += run_records.find_runs(path)
    if not runs:
        raise FileNotFoundError('no runs found under %s; make some with '
                                'scripts/reproduce.py' % ', '.join(args.paths))
    tables = args.table or known
    render = {'text': compare.to_text, 'markdown': compare.to_markdown,
              'csv': compare.to_csv}[args.format]
    chunks = []
    for table in tables:
        doc = paper.load(table)
        experiment = doc.get('settings_from', table)
        mine = [r for r in runs if r.config.get('experiment') == experiment]
        if not mine:
            continue
        recs = compare.compare(table, mine, paper_dataset=args.dataset) \
            if args.dataset not in verdict.OWN_DATASETS else []
        if recs:
            chunks.append('%s%s\n\n%s\n' % ('## ' if args.format == 'markdown' else '',
                                            doc['source'], render(recs)))
    for experiment in dict.fromkeys(r.config.get('experiment') for r in runs):
        for own in verdict.OWN_DATASETS:
            if args.dataset and args.dataset != own:
                continue
            recs = compare.compare_pairs(runs, own, experiment)
            if not recs:
                continue
            if args.format == 'text':
                table = compare.pairs_to_text(recs)
                heading = compare.pairs_heading(own)
            else:
                table = render(recs, compare.PAIR_COLUMNS)
                heading = compare.pairs_heading(own, width=None)
            chunks.append('%s%s: %s\n\n%s\n' % ('## ' if args.format == 'markdown' else '',
                                                experiment, heading, table))
    text = '\n'.join(chunks) or 'no table of results/paper/ matches these runs\n'
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
        print('wrote %s' % args.out)
    else:
        print(text)


if __name__ == '__main__':
    main()
