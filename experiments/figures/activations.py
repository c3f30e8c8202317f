"""Figure 1: BN vs MN on the input of conv2's normalization (the conv2 convolution's
output) of the CIFAR CNN, for a batch of test images.

The activations come from a trainer snapshot (:func:`conv2_activations`; by default the
last snapshot of the CIFAR CNN run of :func:`find_snapshot`) or from a saved (N, C, H,
W) tensor.  For a few random channels: the raw histogram with the fitted density (BN:
one Gaussian; MN:K: the K-component diagonal GMM of :func:`mixnorm.fit_gmm` fitted to
all C channels jointly, each component's weighted 1-D marginal dashed, p(x) solid) and
the histogram after normalisation (BN; MN Eq. 34-36).
"""
import os
import re

import numpy
import yaml

import chainer
import chainer.functions as F

import mixnorm
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import rundir
from experiments.runs import Run, find_runs
from experiments import train as train_lib
from experiments.figures import output, selection
from experiments.figures.curves import gaussian_pdf
from experiments.figures.output import FIGURES_DIR, FigureResult
from experiments.figures.style import (
    COMPONENT_COLORS, DATASET_TITLES, DENSITY_COLOR, header, plt, style)

SNAPSHOT_PREFIX = 'updater/model:main/'   # model params inside a trainer snapshot
BEFORE_XLABEL = 'conv2 output x'
AFTER_XLABEL = 'normalised x'
SNAPSHOT_EXAMPLE = os.path.join('results', 'runs', 'table2', 'cifar100', 'BN-2', 'seed0',
                                'snapshot_epoch_100')


def _snapshot_model_prefix(snapshot):
    try:
        with numpy.load(snapshot) as npz:
            keys = npz.files
    except Exception as e:
        raise ValueError('%s is not a readable Chainer snapshot (npz): %s' % (snapshot, e))
    for prefix in (SNAPSHOT_PREFIX, ''):
        if prefix + 'predictor/linear/W' in keys:
            with numpy.load(snapshot) as npz:
                return prefix, int(npz[prefix + 'predictor/linear/W'].shape[0])
    raise ValueError('%s holds no CIFAR CNN classifier (no key %spredictor/linear/W); '
                     'pass a trainer snapshot snapshot_epoch_<e> of a cifar_cnn run'
                     % (snapshot, SNAPSHOT_PREFIX))


def conv2_activations(snapshot, run_dir=None, n_images=128, seed=0, data_dir=None):
    """The conv2 convolution output (what conv2's BN/MN normalizes) of a CIFAR CNN
    trainer snapshot for ``n_images`` test images of the run's dataset (drawn with
    ``seed``): conv1 block (batch statistics, as in training) -> max pool -> conv2.conv.

    ``run_dir`` (default: the snapshot's folder) supplies ``config.yaml``.  Returns
    ``(activations (N, 128, 16, 16) float32, info dict)``.  Raises FileNotFoundError
    for a missing snapshot/config/dataset and ValueError for a wrong model.
    """
    if not os.path.isfile(snapshot):
        raise FileNotFoundError(
            'snapshot not found: %s (a run writes snapshot_epoch_<e> every '
            'train.snapshot_every epochs into its run directory, e.g. %s)'
            % (snapshot, SNAPSHOT_EXAMPLE))
    run_dir = run_dir or os.path.dirname(os.path.abspath(snapshot))
    cfg_path = os.path.join(run_dir, 'config.yaml')
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError('no config.yaml in %s: pass the run directory of the '
                                'snapshot with --run-dir' % run_dir)
    with open(cfg_path) as f:
        cfg = config_lib.validate(yaml.safe_load(f))
    run = Run(run_dir)
    if cfg['model']['name'] != 'cifar_cnn':
        raise ValueError('Figure 1 needs a CIFAR CNN run (model cifar_cnn); %s is a %s run'
                         % (run_dir, cfg['model']['name']))
    prefix, n_classes = _snapshot_model_prefix(snapshot)

    classifier = train_lib.build_model(cfg, n_classes)
    chainer.serializers.load_npz(snapshot, classifier, path=prefix)
    model = classifier.predictor

    d = cfg['data']
    try:
        dataset = data_lib.load_dataset(d['dataset'], data_dir or d['data_dir'],
                                        subset=d['subset'], seed=cfg['train']['seed'])
    except FileNotFoundError as e:
        raise FileNotFoundError('Figure 1 needs test images of %s (the dataset of %s), '
                                'which were not found: %s\nPoint --data-dir at them.'
                                % (d['dataset'], run_dir, e))
    rs = numpy.random.RandomState(seed)
    n = min(int(n_images), dataset.n_test)
    idx = numpy.sort(rs.permutation(dataset.n_test)[:n])
    x = dataset.test_x[idx]
    with chainer.using_config('train', True), chainer.no_backprop_mode():
        h = model.conv1(x)
        h = F.max_pooling_2d(h, 3, stride=2)
        a = model.conv2.conv(h).array
    epoch = re.search(r'snapshot_epoch_(\d+)$', snapshot)
    info = {'snapshot': os.path.abspath(snapshot), 'run_dir': os.path.abspath(run_dir),
            'row': cfg['row'], 'dataset': d['dataset'], 'source': dataset.source,
            'epoch': int(epoch.group(1)) if epoch else None,
            'epochs_planned': cfg['train']['epochs'], 'n_images': n, 'image_seed': seed,
            'not_comparable': selection.comparability(run)[1], 'run': run}
    return numpy.asarray(a, dtype=numpy.float32), info


def load_activations(path):
    """A saved (N, C, H, W) activation tensor (``.npy``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError('activation file not found: %s' % path)
    a = numpy.load(path, allow_pickle=False)
    if a.ndim != 4:
        raise ValueError('%s: activations must have shape (N, C, H, W), got %s'
                         % (path, a.shape))
    if not numpy.isfinite(a).all():
        raise ValueError('%s: activations contain NaN or Inf' % path)
    return a.astype(numpy.float32)


def component_marginals(gmm, channel, x):
    """(K, len(x)) weighted 1-D marginal densities w_k N(x | mu_kc, var_kc) of a
    diagonal GMM along ``channel``; their sum is the mixture's marginal p(x)."""
    w = numpy.asarray(gmm.weights, numpy.float64)
    m = numpy.asarray(gmm.means, numpy.float64)[:, channel]
    v = numpy.asarray(gmm.variances, numpy.float64)[:, channel]
    return w[:, None] * gaussian_pdf(x[None, :], m[:, None], v[:, None])


def skewness(v):
    v = numpy.asarray(v, numpy.float64)
    s = v.std()
    return float(((v - v.mean()) ** 3).mean() / s ** 3) if s > 0 else 0.0


def fig1_data(activations, n_channels=4, seed=0, ks=(2, 3), em_iters=8, eps=2e-5):
    """Everything Figure 1 draws, from activations (N, C, H, W).

    The n = N*H*W points in R^C are normalised with BN (per-channel batch mean and
    variance) and, for each K in ``ks``, with MN: a diagonal GMM fitted to all C channels
    jointly by :func:`mixnorm.fit_gmm` (the paper's ``em_iters`` split into K-means and
    EM iterations, seeded by ``seed``), posteriors, then Eq. 34-36 without affine.
    Returns ``{'channels', 'raw' (n, c), 'methods': [(name, GMM, normalised (n, c))]}``
    for the ``n_channels`` channels drawn at random (``seed``), sorted.
    """
    a = numpy.asarray(activations, numpy.float32)
    if a.ndim != 4:
        raise ValueError('activations must have shape (N, C, H, W), got %s' % (a.shape,))
    C = a.shape[1]
    points = numpy.ascontiguousarray(a.transpose(0, 2, 3, 1).reshape(-1, C))
    rs = numpy.random.RandomState(seed)
    channels = numpy.sort(rs.choice(C, size=min(int(n_channels), C), replace=False))
    mean, var = points.mean(axis=0), points.var(axis=0)
    bn = mixnorm.GMM(numpy.ones(1, numpy.float32), mean[None, :], var[None, :] + eps)
    methods = [('BN', bn, ((points[:, channels] - mean[channels])
                           / numpy.sqrt(var[channels] + eps)))]
    km, em = mixnorm.split_em_iters(em_iters)
    for k in ks:
        gmm = mixnorm.fit_gmm(points, k, km, em, seed=seed)
        resp = mixnorm.responsibilities(points, gmm)
        y = mixnorm.functions.mixture_normalization(points, None, None, resp, eps=eps).array
        methods.append(('MN:%d' % k, gmm, y[:, channels]))
    return {'channels': channels, 'raw': points[:, channels], 'methods': methods,
            'shape': a.shape}


def _hist(ax, v, color, bins=60):
    """Density histogram over the 0.1-99.9 percentile range (mass outside it is kept
    in the normalisation, so the bars compare with the fitted densities)."""
    lo, hi = numpy.percentile(v, [0.1, 99.9])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = numpy.histogram(v, bins=bins, range=(lo, hi))
    ax.stairs(counts / (len(v) * (edges[1] - edges[0])), edges, fill=True, color=color,
              alpha=0.55, linewidth=0)
    return lo, hi


def draw_fig1(activations, out_dir=FIGURES_DIR, info=None, n_channels=4, seed=0,
              ks=(2, 3), em_iters=8, name='fig1'):
    """Figure 1 from activations (N, C, H, W); ``info`` from :func:`conv2_activations`
    (or ``{'label': ...}`` for a saved tensor).  Rows: BN / MN:K "before" (raw histogram,
    components dashed, p(x) solid) and "after" (normalised histogram, N(0, 1) dotted);
    one column per channel."""
    info = dict(info or {})
    data = fig1_data(activations, n_channels, seed, ks, em_iters)
    channels, raw = data['channels'], data['raw']
    N, C, H, W = data['shape']
    if 'snapshot' in info:
        what = ('conv2 input, %s %s run, epoch %s of %g, %d test images' % (
            info['row'], DATASET_TITLES.get(info['dataset'], info['dataset']),
            info['epoch'], info['epochs_planned'],
            info['n_images']))
        warning = selection.warning_for([info['run']])
    else:
        what = 'activations from %s' % info.get('label', 'an array')
        warning = selection.warning_for([None])       # no run record to go by
    methods = data['methods']
    with style():
        fig, axes = plt.subplots(2 * len(methods), len(channels),
                                 figsize=(2.5 * len(channels), 1.45 * 2 * len(methods)),
                                 squeeze=False)
        stats = []
        for j, c in enumerate(channels):
            x_raw = raw[:, j]
            for i, (mname, gmm, y) in enumerate(methods):
                ax_b, ax_a = axes[2 * i, j], axes[2 * i + 1, j]
                lo, hi = _hist(ax_b, x_raw, '0.6')
                xs = numpy.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 400)
                comps = component_marginals(gmm, c, xs)
                if gmm.n_components > 1:
                    for k, comp in enumerate(comps):
                        ax_b.plot(xs, comp, '--', linewidth=1.0,
                                  color=COMPONENT_COLORS[k % len(COMPONENT_COLORS)])
                ax_b.plot(xs, comps.sum(axis=0), color=DENSITY_COLOR, linewidth=1.5)
                p_raw = component_marginals(gmm, c, x_raw.astype(numpy.float64)).sum(0)
                ll = float(numpy.log(numpy.maximum(p_raw, 1e-300)).mean())
                lo_a, hi_a = _hist(ax_a, y[:, j], '#5c6bc0')
                za = numpy.linspace(min(lo_a, -3), max(hi_a, 3), 300)
                ax_a.plot(za, gaussian_pdf(za, 0.0, 1.0), ':', color='0.2', linewidth=1.0)
                sk = skewness(y[:, j])
                asked = int(mname.split(':')[1]) if ':' in mname else 1
                tag = mname if gmm.n_components == asked \
                    else "%s (K'=%d)" % (mname, gmm.n_components)
                ax_b.set_title('%s before: mean log p %.2f' % (tag, ll), loc='right',
                               fontsize=6.5, pad=2)
                ax_a.set_title('%s after: skew %.2f' % (mname, sk), loc='right',
                               fontsize=6.5, pad=2)
                for ax, xlabel in ((ax_b, BEFORE_XLABEL), (ax_a, AFTER_XLABEL)):
                    ax.set_yticks([])
                    ax.grid(False)
                    ax.tick_params(labelsize=6.5)
                    ax.set_xlabel(xlabel, fontsize=6.5, labelpad=1)
                if i == 0:
                    ax_b.set_title('channel %d' % c, loc='left', fontsize=9,
                                   fontweight='bold', pad=2)
                stats.append({'channel': int(c), 'method': mname,
                              'components': gmm.n_components, 'mean_log_density': ll,
                              'skewness_after': sk, 'skewness_before': skewness(x_raw)})
        for i, (mname, _, _) in enumerate(methods):
            axes[2 * i, 0].set_ylabel('%s\nbefore' % mname, fontsize=8)
            axes[2 * i + 1, 0].set_ylabel('%s\nafter' % mname, fontsize=8)
        top = header(fig, 'Figure 1: BN vs MN on %s' % what, warning)
        fig.text(0.5, -0.005, 'Grey: histogram of the conv output; teal: fitted p(x); '
                 'dashed: weighted mixture components (GMM fitted on all %d channels, '
                 '%d points, EM iter. %d);\nblue: normalised output (BN; MN Eq. 34-36, '
                 'no affine); dotted: N(0, 1). Our model, not the paper\'s.'
                 % (C, N * H * W, em_iters),
                 ha='center', va='top', fontsize=6.5, color='0.4')
        fig.tight_layout(rect=(0, 0, 1, top))
        files = output.save(fig, out_dir, name, {
            'figure': name, 'what': what, 'warning': warning, 'shape': [N, C, H, W],
            'channels': channels.tolist(), 'seed': seed, 'ks': list(ks),
            'em_iters': em_iters, 'stats': stats,
            'source': {k: v for k, v in info.items() if k != 'run'}})
    return FigureResult(name, files, warning=warning)



def find_snapshot(runs_root=rundir.RUNS_ROOT):
    """The snapshot Figure 1 draws by default: the last snapshot of a CIFAR CNN run (the
    trained model), preferring runs comparable to the paper, CIFAR-100 (the paper's), BN
    at conv2 (BN-2, BN-1, ...), seed 0.  None if there is none."""
    best = None
    for run in find_runs(runs_root):
        if run.config['model']['name'] != 'cifar_cnn':
            continue
        found = rundir.snapshots(run.path)
        snapshot = found[-1] if found else None
        if snapshot is None:
            continue
        row = run.config['row']
        mn_conv2 = 'conv2' in ((run.config.get('mn') or {}).get('layers') or [])
        key = (selection.preference(run), selection.paper_dataset(run) != 'cifar100',
               mn_conv2, row != 'BN-2', row, run.config['train']['seed'], run.path)
        if best is None or key < best[0]:
            best = (key, snapshot)
    return best[1] if best else None


def fig1_commands(runs_root=None):
    """The commands that make a snapshot for Figure 1 and draw it."""
    return [selection.reproduce_command('cifar100', ['BN-2'], runs_root),
            'python scripts/figures.py fig1%s' % selection.runs_root_option(runs_root)]


def fig1(runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, snapshot=None, activations=None,
         run_dir=None, data_dir=None, n_images=128, n_channels=4, seed=0, ks=(2, 3),
         em_iters=8, name='fig1'):
    """Figure 1 from a trainer ``snapshot`` (``run_dir``: its run, default its folder;
    ``n_images`` test images of the run's dataset, or of ``data_dir``), from a saved
    (N, C, H, W) tensor ``activations`` (.npy), or, given neither, from the snapshot of
    :func:`find_snapshot` under ``runs_root``.  ``n_channels`` random channels (``seed``),
    MN with ``ks`` components fitted in ``em_iters`` iterations."""
    kwargs = dict(n_channels=n_channels, seed=seed, ks=ks, em_iters=em_iters, name=name)
    if activations is not None:
        return draw_fig1(load_activations(activations), out_dir,
                         {'label': os.path.basename(activations)}, **kwargs)
    if snapshot is None:
        snapshot = find_snapshot(runs_root)
        if snapshot is None:
            return FigureResult(name, [], [('cifar100', 'BN-2')], fig1_commands(runs_root),
                                notes=['no CIFAR CNN snapshot under %s' % runs_root])
    acts, info = conv2_activations(snapshot, run_dir, n_images, seed, data_dir)
    return draw_fig1(acts, out_dir, info, **kwargs)
