"""Draw the paper's Figures 1-9 from our runs (PNG + PDF + JSON under results/figures/).

    python scripts/figures.py all  [--runs-root results/runs] [--out results/figures]
                                   [--data-dir DIR] [--n-images 128]
    python scripts/figures.py fig2 [--runs-root ...] [--out ...] [--window 10]
    python scripts/figures.py fig3 [--runs-root ...] [--out ...] [--window 10]
    python scripts/figures.py fig4 [--runs-root ...] [--out ...] [--window 10]   # Inception
    python scripts/figures.py fig5 [--runs-root ...] [--out ...] [--window 3]    # DenseNet
    python scripts/figures.py fig6 [--runs-root ...] [--bn RUN[,RUN]] [--mn RUN[,RUN]]  # DCGAN
    python scripts/figures.py fig7 [--runs-root ...] [--bn RUN] [--mn RUN] [--out ...]
    python scripts/figures.py fig8 [--runs-root ...] [--run-dir RUN_DIR] [--layer inc2/0/2/4/bn]
                                   [--channels 6] [--seed 0] [--out ...]
    python scripts/figures.py fig9 [--runs-root ...] [--out ...] [--window 10] [--row MN-4]
    python scripts/figures.py fmnist [--runs-root ...] [--out ...] [--window 1]  # Fashion-MNIST
    python scripts/figures.py fig1 [--runs-root ...] [--data-dir DIR] [--n-images 128]
    python scripts/figures.py fig1 --snapshot RUN_DIR/snapshot_epoch_100 [--run-dir RUN_DIR]
    python scripts/figures.py fig1 --activations conv2_input.npy      # (N, C, H, W)
        fig1 options: [--channels 4] [--seed 0] [--ks 2,3] [--em-iters 8] [--out ...]

``all`` draws every figure whose runs exist and, for each missing one, names the runs
and the command that makes them (``scripts/reproduce.py``; for DenseNet
``python -m experiments.train configs/densenet/cifar100/<row>.yaml``).  A figure asked
for by name picks its runs under ``--runs-root`` the same way (Figure 1: the last
snapshot of a CIFAR CNN run) unless they are given.  Figures from smoke, synthetic-data
or subset runs say so in their title.  The paper's curves are not available (only its
tables), so only our runs are drawn.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import figures, rundir  # noqa: E402  (imports mixnorm._compat first)
from experiments.figures import curves, densenet, inception  # noqa: E402

COMMON = ('figure', 'runs_root', 'out')     # the arguments that are not figure options


def _ks(text):
    try:
        ks = tuple(int(k) for k in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError('--ks takes comma-separated integers, e.g. 2,3')
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError('--ks values must be >= 1')
    return ks


def _window(sp, default, what='the std window of the band'):
    sp.add_argument('--window', type=int, default=default,
                    help='epochs in %s (default %d)' % (what, default))


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='figure', required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--out', default=figures.FIGURES_DIR,
                        help='output folder (default results/figures)')
    common.add_argument('--runs-root', default=rundir.RUNS_ROOT,
                        help='folder searched for run directories (default results/runs)')

    def add(name, help):
        return sub.add_parser(name, parents=[common], help=help)

    sp = add('all', 'every figure whose runs exist')
    sp.add_argument('--data-dir', help='CIFAR location, for Figure 1 of CIFAR runs')
    sp.add_argument('--n-images', type=int, default=128,
                    help='test images for Figure 1 (default 128)')
    _window(add('fig2', 'test error curves, Table 2 rows 1-4'), curves.WINDOW)
    _window(add('fig3', 'CIFAR-100: EM iterations and MN layers'), curves.WINDOW)
    _window(add('fig4', 'Inception-V3 test error curves (Table 4 and 6 runs)'),
            curves.WINDOW)
    _window(add('fig5', 'DenseNet on CIFAR-100: training/test error and cross-entropy'),
            densenet.DENSENET_WINDOW, 'the std window of the band, as the paper')
    sp = add('fig6', 'DCGAN: FID against generator updates')
    sp.add_argument('--bn', dest='bn_runs', help='DCGAN-BN run directories, comma-'
                    'separated (default: the DCGAN-BN runs under --runs-root)')
    sp.add_argument('--mn', dest='mn_runs', help='DCGAN-MN run directories, likewise')
    sp = add('fig7', 'DCGAN: samples at the lowest FID')
    sp.add_argument('--bn', dest='bn_run', help='a DCGAN-BN run directory (default: the '
                    'first DCGAN-BN run under --runs-root)')
    sp.add_argument('--mn', dest='mn_run', help='a DCGAN-MN run directory, likewise')
    f8 = add('fig8', 'evolution of the mixture components of inc2/0/2/4')
    f8.add_argument('--run-dir', help='an MN run with mixtures/ (default: the Table 4 '
                    'CIFAR-100 MN-4 run under --runs-root)')
    f8.add_argument('--layer', default=inception.MIXTURE_LAYER,
                    help='BN link path of the MN layer (default %s)' % inception.MIXTURE_LAYER)
    f8.add_argument('--channels', dest='n_channels', metavar='N', type=int, default=6,
                    help='channels drawn (default 6)')
    f8.add_argument('--seed', type=int, default=0, help='channel seed (default 0)')
    f8.add_argument('--name', default='fig8', help='output file stem (default fig8)')
    sp = add('fig9', 'effective number of mixture components through training')
    _window(sp, curves.WINDOW, 'the running average and std band')
    sp.add_argument('--row', default='MN-4', help='Table 4 row (default MN-4)')
    _window(add('fmnist', "Table 2 rows 2 and 4 on Fashion-MNIST (not the paper's data): "
                'test error with inference and with batch statistics'), 1,
            'the std window of the band; 1: no band')
    _window(add('fmnist_placement', 'where MN belongs on Fashion-MNIST (not the paper\'s '
                'data): placement, BN\'s inference, conversion of a BN model'), 1,
            'the std window of the band; 1: no band')
    f1 = add('fig1', 'BN vs MN on conv2 activations')
    src = f1.add_mutually_exclusive_group()
    src.add_argument('--snapshot', help='trainer snapshot snapshot_epoch_<e> of a run '
                     '(default: the last snapshot of a CIFAR CNN run under --runs-root)')
    src.add_argument('--activations', help='.npy tensor of shape (N, C, H, W)')
    f1.add_argument('--run-dir', help="the snapshot's run directory (default: its folder)")
    f1.add_argument('--data-dir', help='CIFAR location (default: the run config\'s)')
    f1.add_argument('--n-images', type=int, default=128, help='test images (default 128)')
    f1.add_argument('--channels', dest='n_channels', metavar='N', type=int, default=4,
                    help='channels drawn (default 4)')
    f1.add_argument('--seed', type=int, default=0, help='channel/image/GMM seed')
    f1.add_argument('--ks', type=_ks, default=(2, 3), help='MN components (default 2,3)')
    f1.add_argument('--em-iters', type=int, default=8,
                    help="the paper's EM iter. for the GMM fits (default 8)")
    f1.add_argument('--name', default='fig1', help='output file stem (default fig1)')
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in COMMON}
    try:
        if args.figure == 'all':
            return figures.all_figures(args.runs_root, args.out, **options)
        result = figures.draw(args.figure, args.runs_root, args.out, **options)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit('error: %s' % e)
    print(figures.report(result))
    if not result.rendered:
        raise SystemExit(1)
    return result


if __name__ == '__main__':
    main()
