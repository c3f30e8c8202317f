"""The parts of a Chainer trainer that every kind of run assembles: MN placed in a
model from the config (:func:`place_mn`, :func:`mn_links`), the optimizer of the
config (:func:`build_optimizer`), an updater's random state in its snapshots
(:func:`serialize_random_state`), and the extensions every run has
(:class:`ReportMixtureComponents`, :func:`progress_extensions`).

The classifier (:mod:`experiments.train`) and the GAN (:mod:`experiments.gan`) build
their trainers from these; neither imports the other.
"""
from mixnorm import _compat  # noqa: F401

import sys

import numpy

import chainer
from chainer import training
from chainer.training import extensions

import mixnorm
from mixnorm import settings as mn_settings
from experiments import config as config_lib
from experiments import optimizers
from experiments import parallel as parallel_lib


# ------------------------------------------------------------------------ models

def place_mn(cfg, model, comm=None, converting=False):
    """Replace the BNs named by ``cfg['mn']['layers']`` in ``model`` with MN links
    (no-op without an ``mn`` section), synchronized over ``comm`` when given; returns
    the replaced BN paths.  With ``mn.convert_at_epoch`` the model keeps its BNs (the
    classifier converts them later) unless ``converting``."""
    mn = cfg.get('mn')
    if not mn:
        return []
    config_lib.check_layers(cfg, model)
    if mn.get('convert_at_epoch') and not converting:
        return []
    kwargs = {k: v for k, v in mn.items() if k in mn_settings.SETTINGS}
    paths = mixnorm.replace_batch_normalization(model, mn['layers'], comm=comm, **kwargs)
    # distinct, reproducible GMM seeds per layer (persistent, so resumable)
    links = dict(model.namedlinks(skipself=True))
    for i, p in enumerate(paths):
        links['/' + p].seed = cfg['train']['seed'] * 1009 + i
    return paths


def mn_links(model):
    """``[(path, link)]`` of the MN links of ``model`` (paths without the leading /)."""
    return [(p.lstrip('/'), link) for p, link in model.namedlinks(skipself=True)
            if isinstance(link, mixnorm.MixtureNormalization)]


# -------------------------------------------------------------------- optimizers

def build_optimizer(cfg, link, par=None):
    """The optimizer of ``cfg['optimizer']`` set up on ``link`` (with weight decay),
    ChainerMN's multi-node optimizer with several processes (``par``)."""
    par = par or parallel_lib.create(None)
    return par.optimizer(optimizers.setup_optimizer(cfg['optimizer'], link))


# ---------------------------------------------------------------------- updaters

def serialize_random_state(serializer, rng, prefix='rng'):
    """Save or restore a ``numpy.random.RandomState`` with a Chainer serializer."""
    name, keys, pos, has_gauss, cached = rng.get_state()
    keys = serializer(prefix + '_keys', keys)
    pos = serializer(prefix + '_pos', int(pos))
    has_gauss = serializer(prefix + '_has_gauss', int(has_gauss))
    cached = serializer(prefix + '_cached_gaussian', float(cached))
    if isinstance(serializer, chainer.serializer.Deserializer):
        rng.set_state((name, numpy.asarray(keys, dtype=numpy.uint32), int(pos),
                       int(has_gauss), float(cached)))


# -------------------------------------------------------------------- extensions

class ReportMixtureComponents(training.Extension):
    """Reports ``mn/<layer>/components``, the effective K' of every MN layer's last fit
    (LogReport averages it over its interval: Sec. 5.3, Figure 9)."""
    trigger = 1, 'iteration'
    priority = training.PRIORITY_WRITER

    def __init__(self, model):
        self.model = model

    def __call__(self, trainer):
        chainer.report({'mn/%s/components' % p: link.effective_components
                        for p, link in mn_links(self.model)
                        if link.effective_components is not None})


class PlainStream:
    """``stream`` without the cursor-control codes Chainer's reporters write (PrintReport
    erases the progress bar before each line): for logs that are not a terminal."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        if not text.startswith('\033['):
            self.stream.write(text)

    def flush(self):
        self.stream.flush()


def progress_extensions(trainer, entries, bar_interval):
    """A line per log entry (PrintReport), and a progress bar only on a terminal: in a
    piped log the bar and its escape codes would be noise."""
    if sys.stdout.isatty():
        trainer.extend(extensions.PrintReport(entries))
        trainer.extend(extensions.ProgressBar(update_interval=bar_interval))
    else:
        trainer.extend(extensions.PrintReport(entries, out=PlainStream(sys.stdout)))
