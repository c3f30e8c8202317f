"""The paper's figures, drawn from OUR runs (``scripts/figures.py`` is the CLI).

=========  ==============================================  ===========================
figure     what                                            module
=========  ==============================================  ===========================
``fig1``   BN vs MN on conv2's input, CIFAR CNN             :mod:`.activations`
``fig2``   CIFAR CNN test error, Table 2 rows 1-4           :mod:`.cifar`
``fig3``   CIFAR-100: EM iterations and MN layers           :mod:`.cifar`
``fig4``   Inception-V3 test error (Tables 4, 6)            :mod:`.inception`
``fig5``   DenseNet-40/100 on CIFAR-100                     :mod:`.densenet`
``fig6``   DCGAN FID against generator updates             :mod:`.dcgan`
``fig7``   DCGAN samples at the lowest FID                  :mod:`.dcgan`
``fig8``   mixture components of inc2/0/2/4 (Table 4 MN-4)  :mod:`.inception`
``fig9``   effective number of components (Table 4 MN-4)   :mod:`.inception`
``fmnist`` Table 2 rows on Fashion-MNIST, inference and     :mod:`.fmnist`
           batch-statistics test error (not the paper's)
=========  ==============================================  ===========================

``fmnist_placement`` (:mod:`.fmnist`): where MN belongs on Fashion-MNIST, the paper's
layers against every layer, BN's inference, and BN converted half-way (CIFAR CNN and
DenseNet-40).

Shared by all: :mod:`.style` (one look), :mod:`.output` (files and
:class:`FigureResult`), :mod:`.selection` (which runs, and whether they are comparable
to the paper: :func:`.selection.comparability`) and :mod:`.curves` (curves from logs,
the windowed std band of the captions, the curve figures).  :data:`FIGURES` maps each
name to its function, called as ``FIGURES[name](runs_root, out_dir, **options)``; it
returns a :class:`FigureResult` and, for runs that do not exist yet, names them and
the commands that make them.

The paper publishes only tables, not its curves: nothing here draws the paper's curves.
Figures from smoke, synthetic-data or subset runs say so in their title.  Every figure is
written as ``<name>.png`` and ``<name>.pdf`` plus ``<name>.json`` (what was plotted: the
run directories used, the seeds, the missing runs) under ``results/figures/``.  No
training module imports this package.
"""
from mixnorm import _compat  # noqa: F401  (NumPy-2 shim before any chainer import)

from experiments import rundir
from experiments.figures import activations, cifar, dcgan, densenet, fmnist, inception
from experiments.figures.output import FIGURES_DIR, FigureResult, report

FIGURES = {
    'fig1': activations.fig1,
    'fig2': cifar.fig2,
    'fig3': cifar.fig3,
    'fig4': inception.fig4,
    'fig5': densenet.fig5,
    'fig6': dcgan.fig6,
    'fig7': dcgan.fig7,
    'fig8': inception.fig8,
    'fig9': inception.fig9,
    'fmnist': fmnist.fig_fmnist,
    'fmnist_placement': fmnist.fig_fmnist_placement,
}
ALL_ORDER = ('fig2', 'fig3', 'fig1', 'fig4', 'fig5', 'fig8', 'fig9', 'fig6', 'fig7', 'fmnist',
             'fmnist_placement')

__all__ = ['ALL_ORDER', 'FIGURES', 'FIGURES_DIR', 'FigureResult', 'all_figures', 'draw',
           'report']


def draw(figure, runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, **options):
    """Figure ``figure`` (a key of :data:`FIGURES`) from the runs under ``runs_root``;
    ``options`` are that figure function's keyword arguments."""
    if figure not in FIGURES:
        raise ValueError('unknown figure %r; available: %s' % (figure, ', '.join(FIGURES)))
    return FIGURES[figure](runs_root, out_dir, **options)


def all_figures(runs_root=rundir.RUNS_ROOT, out_dir=FIGURES_DIR, data_dir=None,
                n_images=128, log=print):
    """Every figure whose runs exist (in the order of :data:`ALL_ORDER`); prints
    (``log``) what was written and, for what is missing, the runs and the commands that
    make them.  Figure 1 uses the snapshot of :func:`.activations.find_snapshot` and
    ``n_images`` test images (of ``data_dir`` if given).  A figure whose runs cannot be
    read is reported with the reason.  Returns [FigureResult]."""
    results = []
    for name in ALL_ORDER:
        options = {'data_dir': data_dir, 'n_images': n_images} if name == 'fig1' else {}
        try:
            results.append(draw(name, runs_root, out_dir, **options))
        except (FileNotFoundError, ValueError) as e:
            results.append(FigureResult(name, [], notes=[str(e)]))
    for r in results:
        log(report(r))
    return results
