"""Draw the paper's Figures 1-5, 8 and 9 from our runs (PNG + PDF under results/figures/).

    python scripts/figures.py all  [--runs-root results/runs] [--out results/figures]
                                   [--data-dir DIR] [--n-images 128]
    python scripts/figures.py fig2 [--runs-root ...] [--out ...] [--window 10]
    python scripts/figures.py fig3 [--runs-root ...] [--out ...] [--window 10]
    python scripts/figures.py fig4 [--runs-root ...] [--out ...] [--window 10]   # Inception
    python scripts/figures.py fig5 [--runs-root ...] [--out ...] [--window 3]    # DenseNet
    python scripts/figures.py fig8 [--runs-root ...] [--run-dir RUN_DIR] [--layer inc2/0/2/4/bn]
                                   [--channels 6] [--seed 0] [--out ...]
    python scripts/figures.py fig9 [--runs-root ...] [--out ...] [--window 10] [--row MN-4]
    python scripts/figures.py fig1 --snapshot RUN_DIR/snapshot_epoch_50 [--run-dir RUN_DIR]
                                   [--data-dir DIR] [--n-images 128]
    python scripts/figures.py fig1 --activations conv2_input.npy      # (N, C, H, W)
        fig1 options: [--channels 4] [--seed 0] [--ks 2,3] [--em-iters 8] [--out ...]

``all`` draws every figure whose runs exist and, for each missing one, names the runs
and the command that makes them (``scripts/reproduce.py``; for DenseNet
``python -m experiments.train configs/densenet/cifar100/<row>.yaml``).  Figures from smoke,
synthetic-data or subset runs say so in their title.  The paper's curves are not
available (only its tables), so only our runs are drawn.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import figures  # noqa: E402  (imports mixnorm._compat first)
from experiments import records  # noqa: E402


def _ks(text):
    try:
        ks = tuple(int(k) for k in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError('--ks takes comma-separated integers, e.g. 2,3')
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError('--ks values must be >= 1')
    return ks


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='figure', required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--out', default=figures.FIGURES_DIR,
                        help='output folder (default results/figures)')
    runs = argparse.ArgumentParser(add_help=False)
    runs.add_argument('--runs-root', default=records.RUNS_ROOT,
                      help='folder searched for run directories (default results/runs)')
    sp = sub.add_parser('all', parents=[common, runs], help='every figure whose runs exist')
    sp.add_argument('--data-dir', help='CIFAR location, for Figure 1 of CIFAR runs')
    sp.add_argument('--n-images', type=int, default=128,
                    help='test images for Figure 1 (default 128)')
    for name, what in (('fig2', 'test error curves, Table 2 rows 1-4'),
                       ('fig3', 'CIFAR-100: EM iterations and MN layers')):
        sp = sub.add_parser(name, parents=[common, runs], help=what)
        sp.add_argument('--window', type=int, default=figures.WINDOW,
                        help='epochs in the std window of the band (default 10)')
    sp = sub.add_parser('fig4', parents=[common, runs],
                        help='Inception-V3 test error curves (Table 4 and 6 runs)')
    sp.add_argument('--window', type=int, default=figures.WINDOW,
                    help='epochs in the std window of the band (default 10)')
    sp = sub.add_parser('fig5', parents=[common, runs],
                        help='DenseNet on CIFAR-100: training/test error and cross-entropy')
    sp.add_argument('--window', type=int, default=figures.DENSENET_WINDOW,
                    help='epochs in the std window of the band (default 3, as the paper)')
    f8 = sub.add_parser('fig8', parents=[common, runs],
                        help='evolution of the mixture components of inc2/0/2/4')
    f8.add_argument('--run-dir', help='an MN run with mixtures/ (default: the Table 4 '
                    'CIFAR-100 MN-4 run under --runs-root)')
    f8.add_argument('--layer', default=figures.MIXTURE_LAYER,
                    help='BN link path of the MN layer (default %s)' % figures.MIXTURE_LAYER)
    f8.add_argument('--channels', type=int, default=6, help='channels drawn (default 6)')
    f8.add_argument('--seed', type=int, default=0, help='channel seed (default 0)')
    f8.add_argument('--name', default='fig8', help='output file stem (default fig8)')
    sp = sub.add_parser('fig9', parents=[common, runs],
                        help='effective number of mixture components through training')
    sp.add_argument('--window', type=int, default=figures.WINDOW,
                    help='epochs of the running average and std band (default 10)')
    sp.add_argument('--row', default='MN-4', help='Table 4 row (default MN-4)')
    f1 = sub.add_parser('fig1', parents=[common], help='BN vs MN on conv2 activations')
    src = f1.add_mutually_exclusive_group(required=True)
    src.add_argument('--snapshot', help='trainer snapshot snapshot_epoch_<e> of a run')
    src.add_argument('--activations', help='.npy tensor of shape (N, C, H, W)')
    f1.add_argument('--run-dir', help="the snapshot's run directory (default: its folder)")
    f1.add_argument('--data-dir', help='CIFAR location (default: the run config\'s)')
    f1.add_argument('--n-images', type=int, default=128, help='test images (default 128)')
    f1.add_argument('--channels', type=int, default=4, help='channels drawn (default 4)')
    f1.add_argument('--seed', type=int, default=0, help='channel/image/GMM seed')
    f1.add_argument('--ks', type=_ks, default=(2, 3), help='MN components (default 2,3)')
    f1.add_argument('--em-iters', type=int, default=8,
                    help="the paper's EM iter. for the GMM fits (default 8)")
    f1.add_argument('--name', default='fig1', help='output file stem (default fig1)')
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if args.figure == 'all':
            return figures.all_figures(args.runs_root, args.out, data_dir=args.data_dir,
                                       n_images=args.n_images)
        if args.figure in ('fig2', 'fig3', 'fig4', 'fig5'):
            result = getattr(figures, args.figure)(args.runs_root, args.out, args.window)
        elif args.figure == 'fig8':
            result = figures.fig8(args.runs_root, args.out, run_dir=args.run_dir,
                                  layer=args.layer, n_channels=args.channels,
                                  seed=args.seed, name=args.name)
        elif args.figure == 'fig9':
            result = figures.fig9(args.runs_root, args.out, args.window, row=args.row)
        elif args.snapshot:
            result = figures.fig1_from_snapshot(
                args.snapshot, args.out, run_dir=args.run_dir, n_images=args.n_images,
                seed=args.seed, data_dir=args.data_dir, n_channels=args.channels,
                ks=args.ks, em_iters=args.em_iters, name=args.name)
        else:
            result = figures.fig1_from_file(args.activations, args.out,
                                            n_channels=args.channels, seed=args.seed,
                                            ks=args.ks, em_iters=args.em_iters,
                                            name=args.name)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit('error: %s' % e)
    print(figures.report(result))
    if not result.rendered:
        raise SystemExit(1)
    return result


if __name__ == '__main__':
    main()
