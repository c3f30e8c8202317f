"""Where figures go and what a figure function reports: ``<name>.png``, ``<name>.pdf``
and ``<name>.json`` (what was plotted: the run directories, seeds, missing runs) under
``results/figures/``, and the :class:`FigureResult` every figure function returns."""
import dataclasses
import os

from experiments import rundir
from experiments.figures.style import plt

FIGURES_DIR = os.path.join(os.path.dirname(rundir.RUNS_ROOT), 'figures')


@dataclasses.dataclass
class FigureResult:
    """What a figure function did: ``files`` written (empty if nothing to draw),
    ``missing`` [(dataset, row)] runs, ``commands`` that make them, ``warning`` (the
    not-comparable notice in the title, or None) and free-text ``notes``."""
    name: str
    files: list
    missing: list = dataclasses.field(default_factory=list)
    commands: list = dataclasses.field(default_factory=list)
    warning: str = None
    notes: list = dataclasses.field(default_factory=list)

    @property
    def rendered(self):
        return bool(self.files)


def save(fig, out_dir, name, sources=None):
    """Write ``<name>.png``, ``<name>.pdf`` (and ``<name>.json`` from ``sources``) under
    ``out_dir``; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ext in ('png', 'pdf'):
        path = os.path.join(out_dir, '%s.%s' % (name, ext))
        fig.savefig(path, metadata={'CreationDate': None} if ext == 'pdf' else None)
        paths.append(path)
    plt.close(fig)
    if sources is not None:
        path = os.path.join(out_dir, name + '.json')
        rundir.write_json(path, sources)
        paths.append(path)
    return paths


def report(r):
    """Text lines describing a :class:`FigureResult`."""
    lines = []
    if r.rendered:
        lines.append('%s: wrote %s' % (r.name, ', '.join(r.files)))
        if r.warning:
            lines.append('  note: %s' % r.warning)
        if r.missing:
            lines.append('  incomplete, missing runs: %s' % ', '.join(
                '%s %s' % k for k in r.missing))
    else:
        lines.append('%s: MISSING%s' % (r.name, ' - no runs of %s' % ', '.join(
            '%s %s' % k for k in r.missing) if r.missing else ''))
    lines += ['  %s' % n for n in r.notes]
    if r.commands:
        lines.append('  make them with:')
        lines += ['    %s' % c for c in r.commands]
        lines.append('  (quick offline demo: add --preset smoke --synthetic to reproduce.py%s, '
                     'then rerun `python scripts/figures.py all`; such figures are marked not '
                     'comparable)' % (' or --preset smoke --set data.dataset=synthetic to '
                                      'experiments.train' if any(
                                          'experiments.train' in c for c in r.commands)
                                      else ''))
    return '\n'.join(lines)
