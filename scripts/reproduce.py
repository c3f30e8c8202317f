"""Rerun a table of the paper and print our numbers beside the paper's.

    python scripts/reproduce.py table2 --dataset cifar10|cifar100|fashion-mnist
        [--rows BN-2,MN-2]
        [--preset smoke] [--synthetic] [--device 0] [--seeds 3] [--data-dir DIR]
        [--download] [--force]
    python scripts/reproduce.py table3 --dataset cifar100   # from finished table2 runs
    python scripts/reproduce.py densenet --depth 40|100     # best test error, Sec. 4.4
    python scripts/reproduce.py dcgan [--inception-weights NPZ]   # FID, Sec. 4.5

Each row is ``configs/<table>/<dataset>/<row>.yaml``; each (row, seed) trains into its
own run directory (``results/runs/...``, smoke runs under ``results/runs/smoke/``).  A
finished run is not trained again (``--force`` starts it over); an interrupted one
resumes from its latest snapshot.  What it does lives in :mod:`experiments.reproduce`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import pipeline  # noqa: E402  (imports mixnorm._compat first)
from experiments import cli, reproduce, rundir  # noqa: E402


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('table', help='table2 ... table6, densenet or dcgan')
    p.add_argument('--dataset', choices=['cifar10', 'cifar100', 'fashion-mnist'],
                   help='the dataset of the table (required for tables); fashion-mnist: '
                        'real images that are not the paper\'s, compared BN vs MN only')
    p.add_argument('--depth', type=int, choices=[40, 100], default=40,
                   help='DenseNet depth (densenet only)')
    p.add_argument('--rows', help='comma-separated row names (default: all)')
    p.add_argument('--seeds', type=int, default=1, help='number of seeds per row')
    p.add_argument('--seed0', type=int, default=0, help='first seed')
    p.add_argument('--runs-root', default=rundir.RUNS_ROOT)
    p.add_argument('--no-train', action='store_true', help='only print the comparison')
    p.add_argument('--inception-weights', metavar='NPZ',
                   help='FID Inception weights (dcgan only; see experiments/fid.py)')
    p.add_argument('--no-fid', action='store_true', help='dcgan: train without FID')
    pipeline.add_run_arguments(p)
    return p


@cli.entry_point
def main(argv=None):
    return reproduce.reproduce(parser().parse_args(argv))


if __name__ == '__main__':
    main()
