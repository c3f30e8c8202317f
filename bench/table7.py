"""Benchmark: the paper's Table 7 (Sec. 5.1) -- training iterations per second of a whole
DenseNet with BN vs MN at its last BN (not a test).

Setting (the paper's): CIFAR-100-shaped random data (3 x 32 x 32, 100 classes); the basic
DenseNet (3 blocks, growth 12) with 5 or 12 layers per block, i.e. 196 or 448 input
channels to the last BN (the paper's "20" and "40 layers"; see
``experiments/models/densenet.py`` on why 196 channels is 19 layers); batch 64 or 128.
Row "BN" (K = 1) is the unmodified DenseNet with Chainer's ``BatchNormalization``; rows
"MN" replace ONLY the last BN (``'last'``) with ``MixtureNormalization``, K = 2..5, EM
iter. 2.  One iteration is forward, backward and the NesterovAG update (lr 0.1, momentum
0.9, weight decay 1e-4 hook), as in training.

The rows of one (dim, batch) group are measured side by side in one run: every model is
warmed up, then the models take turns, one iteration each, for ``--iters`` rounds; a
row's iterations/sec is 1 / (median iteration time).  Selecting any row of a group also
measures that group's BN row, which the MN/BN ratio needs.  Printed beside the paper's
numbers (Titan X Pascal, ``results/paper/table7.json``) with the MN/BN throughput ratio
per row, ours and the paper's: only the ratios are comparable across hardware.

    python bench/table7.py [--device cpu|gpu] [--iters N] [--warmup N]
                           [--rows all | dim196 | 'L40-*' | L40-bs64-BN,L40-bs64-MN-K5 ...]
                           [--batch N] [--blas-threads N] [--out DIR] [--no-write]

Defaults: on the GPU all 15 rows, ``--iters 50 --warmup 10``.  On the CPU only the five
196-dim rows (``--rows dim196``), ``--iters 3 --warmup 1``: Chainer's NumPy convolution
(im2col + tensordot) makes one batch-64 iteration of the 196-dim net take ~2.5 s on 2
cores, so those five rows take about a minute; the 448-dim net (DenseNet-40) has ~5x the
convolution work and its batch-64 iterations took 15-50 s on 2 shared cores, so
``--rows all`` on such a CPU takes about an hour.  ``--blas-threads N`` limits BLAS
(every model alike) to N threads: on a machine shared with other work ``--blas-threads
1`` gives steadier ratios.  On the CPU the MN fit at the last BN
(tens of ms, ``bench/bench_layer.py``) is lost in the convolutions' seconds: expect MN/BN
ratios near 1 there, within the run-to-run noise.  ``--batch N``
replaces every row's batch size (smoke tests only: no longer the paper's setting; the
record says so).  Writes ``results/bench/table7_<cpu|gpu>.{json,md}`` unless
``--no-write``.
"""
import argparse
import fnmatch
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import OUT_DIR, blas_limit, environment, write_record  # noqa: E402
import mixnorm  # noqa: E402
import chainer  # noqa: E402
import chainer.links as L  # noqa: E402
from experiments import optimizers, paper  # noqa: E402
from experiments.models.densenet import DenseNet  # noqa: E402

GROWTH = 12
N_CLASSES = 100
EM_ITERS = 2
DEFAULTS = {'cpu': {'iters': 3, 'warmup': 1, 'rows': 'dim196'},
            'gpu': {'iters': 50, 'warmup': 10, 'rows': 'all'}}
SHORTHANDS = {'dim196': 'L20-*', 'dim448': 'L40-*', 'bs64': '*-bs64-*', 'bs128': '*-bs128-*'}


def paper_rows():
    """[(key, row)] of the paper's Table 7, in the paper's order; each row gets
    ``layers_per_block`` from its dim (16 + 3 * n * 12 = dim)."""
    out = []
    for key, r in paper.rows('table7', 'cifar100').items():
        n, rem = divmod(r['dim'] - 16, 3 * GROWTH)
        assert rem == 0, (key, r['dim'])
        out.append((key, dict(r, layers_per_block=n)))
    return out


def select_rows(spec):
    """The paper's rows matching ``spec`` (comma-separated keys, fnmatch patterns or the
    shorthands dim196/dim448/bs64/bs128), plus the BN row of every group touched."""
    rows = paper_rows()
    if not spec or spec == 'all':
        return rows
    pats = [SHORTHANDS.get(s.strip(), s.strip()) for s in spec.split(',') if s.strip()]
    unmatched = [p for p in pats if not any(fnmatch.fnmatchcase(k, p) for k, _ in rows)]
    if unmatched:
        raise SystemExit('table7: --rows %s match no row; rows: %s; shorthands: %s'
                         % (', '.join(unmatched), ', '.join(k for k, _ in rows),
                            ', '.join(SHORTHANDS)))
    picked = {k for k, _ in rows if any(fnmatch.fnmatchcase(k, p) for p in pats)}
    groups = {(r['dim'], r['batch_size']) for k, r in rows if k in picked}
    return [(k, r) for k, r in rows
            if k in picked or (r['model'] == 'BN' and (r['dim'], r['batch_size']) in groups)]


def build(row, base, device):
    """Classifier + NesterovAG optimizer for ``row``; MN rows start from a copy of
    ``base`` (the group's BN DenseNet) with its last BN replaced."""
    model = base.copy(mode='copy')
    if row['model'] == 'MN':
        mixnorm.replace_batch_normalization(model, ['last'], n_components=row['K'],
                                            em_iters=EM_ITERS, seed=0)
    clf = L.Classifier(model)
    clf.to_device(device)
    opt = optimizers.setup_optimizer({'name': 'nesterov', 'lr': 0.1, 'momentum': 0.9,
                                      'weight_decay': 1e-4}, clf)
    return clf, opt


def bench_group(rows, xp, device, iters, warmup, sync):
    """Time the rows of one (dim, batch) group side by side; fills ``ours_*`` keys."""
    r0 = rows[0][1]
    batch = r0['batch_size']
    rng = np.random.RandomState(0)
    x = xp.asarray(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    t = xp.asarray(rng.randint(0, N_CLASSES, batch).astype(np.int32))
    numpy_seed = np.random.get_state()
    np.random.seed(0)
    base = DenseNet(N_CLASSES, layers_per_block=r0['layers_per_block'], growth=GROWTH)
    np.random.set_state(numpy_seed)
    assert base.channels['last'] == r0['dim']
    built = [build(r, base, device) for _, r in rows]

    def step(clf, opt):
        opt.update(clf, x, t)
        if sync:
            sync()

    def release(clf):
        # L.Classifier keeps the last loss and with it the whole graph of the iteration;
        # with several models taking turns that would hold several graphs at once.
        # Untimed, so each timed iteration starts as in training (one graph alive at most).
        loss = float(clf.loss.array)
        clf.loss.unchain_backward()
        clf.y = clf.loss = clf.accuracy = None
        return loss

    losses = [None] * len(built)
    for i, (clf, opt) in enumerate(built):
        for _ in range(warmup):
            step(clf, opt)
            losses[i] = release(clf)
    times = [[] for _ in built]
    for _ in range(iters):
        for i, (clf, opt) in enumerate(built):
            if sync:
                sync()
            start = time.perf_counter()
            step(clf, opt)
            times[i].append(time.perf_counter() - start)
            losses[i] = release(clf)
    for (key, r), ts, (clf, _), loss in zip(rows, times, built, losses):
        med = float(np.median(ts))
        r['ours_ms'] = 1e3 * med
        r['ours_it_per_s'] = 1.0 / med
        r['ours_ms_all'] = [1e3 * v for v in ts]
        r['ours_ms_min'] = 1e3 * min(ts)
        r['ours_loss'] = loss
        if r['model'] == 'MN':
            r['ours_effective_K'] = clf.predictor.final_bn.effective_components
    del built


def run(args, env):
    device_name = args.device
    if device_name == 'gpu':
        try:
            import cupy
        except ImportError:
            sys.exit('table7: --device gpu needs CuPy and a CUDA device')
        xp, sync = cupy, cupy.cuda.Device().synchronize
        device = chainer.get_device('@cupy:0')
        device.use()
    else:
        xp, sync = np, None
        device = chainer.get_device('@numpy')
    iters = args.iters if args.iters is not None else DEFAULTS[device_name]['iters']
    warmup = args.warmup if args.warmup is not None else DEFAULTS[device_name]['warmup']
    if iters < 1 or warmup < 0:
        sys.exit('table7: --iters must be >= 1 and --warmup >= 0')
    rows = select_rows(args.rows or DEFAULTS[device_name]['rows'])
    rows = [(k, {'row': k, 'model': r['model'], 'K': r['K'], 'batch_size': r['batch_size'],
                 'dim': r['dim'], 'layers_per_block': r['layers_per_block'],
                 'paper_depth': r['densenet_depth'], 'paper_batch_size': r['batch_size'],
                 'paper_it_per_s': r['iterations_per_sec']}) for k, r in rows]
    if args.batch is not None:
        if args.batch < 1:
            sys.exit('table7: --batch must be >= 1')
        for _, r in rows:
            r['batch_size'] = args.batch
        print('# --batch %d: NOT the paper\'s batch sizes (smoke run); the paper\'s ratios are '
              'for batch 64/128' % args.batch)
    print('# Table 7 on %s: DenseNet (k=12) training iterations/sec, BN vs MN at the last BN '
          '(EM iter. %d); median of %d side-by-side iterations after %d warm-up; BLAS '
          'threads: %s' % (device_name.upper(), EM_ITERS, iters, warmup,
                           args.blas_threads or 'as configured'), flush=True)
    groups = []
    for k, r in rows:
        g = (r['dim'], r['paper_batch_size'])
        if not groups or groups[-1][0] != g:
            groups.append((g, []))
        groups[-1][1].append((k, r))
    header = ('%-16s %-5s %2s %5s %5s | %9s %9s %7s | %9s %7s'
              % ('row', 'model', 'K', 'batch', 'dim', 'ours it/s', 'ours ms', 'MN/BN',
                 'paper it/s', 'MN/BN'))
    print(header)
    print('-' * len(header))
    out = []
    for (dim, batch), grows in groups:
        t0 = time.perf_counter()
        bench_group(grows, xp, device, iters, warmup, sync)
        bn = [r for _, r in grows if r['model'] == 'BN'][0]
        for key, r in grows:
            r['ours_ratio'] = r['ours_it_per_s'] / bn['ours_it_per_s']
            r['paper_ratio'] = r['paper_it_per_s'] / bn['paper_it_per_s']
            r['device'] = device_name
            print('%-16s %-5s %2d %5d %5d | %9.3f %9.1f %6.3fx | %9.2f %6.3fx'
                  % (key, r['model'], r['K'], r['batch_size'], r['dim'], r['ours_it_per_s'],
                     r['ours_ms'], r['ours_ratio'], r['paper_it_per_s'], r['paper_ratio']),
                  flush=True)
            out.append(r)
        print('  (group dim %d, batch %d: %.1f s)' % (dim, grows[0][1]['batch_size'],
                                                     time.perf_counter() - t0),
              flush=True)
        spread = max(max(r['ours_ms_all']) / min(r['ours_ms_all']) for _, r in grows)
        if spread > 1.5:
            print('  WARNING: iteration times within a row vary up to %.1fx (min to max): '
                  'the machine was busy or throttled; these ratios are noise-dominated, '
                  'rerun with more --iters on an idle machine' % spread, flush=True)
    if not args.no_write:
        columns = [('row', 'row', '%s'), ('model', 'model', '%s'), ('K', 'K', '%d'),
                   ('batch size', 'batch_size', '%d'), ('dim.', 'dim', '%d'),
                   ('ours it/s', 'ours_it_per_s', '%.3f'), ('ours ms/iter', 'ours_ms', '%.1f'),
                   ('ours MN/BN', 'ours_ratio', '%.3fx'),
                   ('paper it/s (Titan X Pascal)', 'paper_it_per_s', '%.2f'),
                   ('paper MN/BN', 'paper_ratio', '%.3fx')]
        bn_impl = ('Chainer BatchNormalization on CuPy (cuDNN if available: %s)'
                   % chainer.should_use_cudnn('>=auto') if device_name == 'gpu'
                   else 'Chainer BatchNormalization on NumPy')
        write_record('table7_%s' % device_name,
                     'Table 7: DenseNet training iterations/sec, BN vs MN at the last BN (%s)'
                     % device_name.upper(), env, out, columns,
                     'Whole-network training iteration (forward, backward, NesterovAG update '
                     'with weight decay) on random CIFAR-100-shaped data; MN replaces only '
                     'the last BN (K from the row, EM iter. %d: 1 K-means + 1 EM); %s. '
                     'Median of %d iterations per row after %d warm-up, the rows of a '
                     '(dim, batch) group taking turns (each model\'s graph released, '
                     'untimed, after its iteration; all times in ours_ms_all). '
                     '"dim. 196" is DenseNet with 5 layers per block (19 layers; the '
                     'paper says 20), "448" DenseNet-40. The '
                     "paper's numbers are from a Titan X (Pascal) GPU: compare the MN/BN "
                     'ratios, not the absolute rates.'
                     % (EM_ITERS, bn_impl, iters, warmup)
                     + (' SMOKE RUN: --batch %d replaced the paper\'s batch sizes.' % args.batch
                        if args.batch is not None else ''), out_dir=args.out,
                     extra={'iters': iters, 'warmup': warmup, 'device': device_name,
                            'batch_override': args.batch,
                            'blas_threads': args.blas_threads})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', choices=['cpu', 'gpu'], default='cpu')
    p.add_argument('--iters', type=int, help='timed iterations per row (cpu 3, gpu 50)')
    p.add_argument('--warmup', type=int, help='warm-up iterations per row (cpu 1, gpu 10)')
    p.add_argument('--rows', help="all, or comma-separated row keys or patterns of "
                   "results/paper/table7.json (e.g. 'L20-*', L40-bs64-MN-K5) or dim196, "
                   "dim448, bs64, bs128; default: cpu dim196, gpu all")
    p.add_argument('--batch', type=int, help="override every row's batch size (smoke "
                   "tests only)")
    p.add_argument('--blas-threads', type=int, default=None,
                   help='limit the BLAS threads of every model (default: as configured)')
    p.add_argument('--out', default=OUT_DIR, help='folder of the record (default %(default)s)')
    p.add_argument('--no-write', action='store_true', help='print only')
    p.add_argument('--list', action='store_true',
                   help='print the rows --rows selects (key, layers per block) and stop')
    args = p.parse_args(argv)
    if args.list:
        for key, row in select_rows(args.rows or DEFAULTS[args.device]['rows']):
            print(key, row['layers_per_block'])
        return []
    env = environment.describe()
    if args.device == 'gpu' and env['gpu'] is None:
        sys.exit('table7: --device gpu needs CuPy and a CUDA device')
    if args.blas_threads is not None and args.blas_threads < 1:
        sys.exit('table7: --blas-threads must be >= 1')
    with blas_limit(args.blas_threads):
        return run(args, env)


if __name__ == '__main__':
    main()
