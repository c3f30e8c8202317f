"""Every setting of Mixture Normalization, defined once: :data:`SETTINGS`.

Each :class:`Setting` holds a name, a default, the values it allows (its type and
range) and a one-line meaning, as scikit-learn's ``_parameter_constraints``.  Every
check reads this table: :class:`mixnorm.MixtureNormalization` checks its arguments
with :func:`check`, :func:`mixnorm.fit_gmm` and :mod:`mixnorm.functions` the ones
they share, and a config schema (the experiments' ``mn`` section) takes the values
allowed, the defaults and the words of its messages from :attr:`Setting.constraints`,
:attr:`Setting.default` and :meth:`Setting.requirement`, so that they cannot disagree
(and states its other keys' limits with the same constraint classes).
BatchNormalization's own arguments of the link (``size``, ``dtype``, ``axis``,
``use_gamma``, ``use_beta``, ``initial_gamma``, ``initial_beta``) keep BN's meaning and
are checked by the link.

A bad value raises :class:`InvalidParameter` (a ``ValueError`` and a ``TypeError``,
as scikit-learn's ``InvalidParameterError``) naming the parameter, what it allows and
what it means.
"""
import math
import numbers
from typing import NamedTuple

import numpy


class InvalidParameter(ValueError, TypeError):
    """A bad argument: both a ``ValueError`` and a ``TypeError``."""


def invalid(caller, name, allowed_values, value, meaning=None):
    """The :class:`InvalidParameter` saying that ``name`` of ``caller`` must be
    ``allowed_values`` (a phrase: 'an int in the range [1, inf)'; see :func:`requirement`)."""
    return InvalidParameter('The %r parameter of %s %s. Got %r instead.'
                            % (name, caller, requirement(allowed_values, meaning), value))


# --------------------------------------------------------------------- constraints
# A constraint has ``accepts(value)`` and ``str()``, the phrase for messages; ``None``
# as a constraint allows the value None.

def _is_number(value, kind):
    return isinstance(value, kind) and not isinstance(value, (bool, numpy.bool_)) \
        and not (isinstance(value, numbers.Real) and math.isnan(value))


class Interval(NamedTuple):
    """Numbers of ``kind`` (``numbers.Integral`` or ``numbers.Real``) from ``low`` to
    ``high`` (``math.inf``: unbounded); ``closed``: 'both', 'left', 'right' or
    'neither'.  Bools and NaN are never numbers here."""
    kind: type
    low: float
    high: float
    closed: str

    def accepts(self, value):
        if not _is_number(value, self.kind):
            return False
        above = value >= self.low if self.closed in ('both', 'left') else value > self.low
        below = value <= self.high if self.closed in ('both', 'right') else value < self.high
        return above and below

    def convert(self, value):
        return int(value) if self.kind is numbers.Integral else float(value)

    def __str__(self):
        return '%s in the range %s%s, %s%s' % (
            'an int' if self.kind is numbers.Integral else 'a number',
            '[' if self.closed in ('both', 'left') else '(', _number(self.low),
            _number(self.high), ']' if self.closed in ('both', 'right') else ')')


def _number(x):
    return 'inf' if x == math.inf else '-inf' if x == -math.inf else '%g' % x


class Options(NamedTuple):
    """One of ``values`` (strings, ints or None)."""
    values: tuple

    def accepts(self, value):
        return any(value is v or (isinstance(value, str) and value == v)
                   or (_is_number(v, numbers.Integral) and _is_number(value, numbers.Integral)
                       and value == v)
                   for v in self.values)

    def convert(self, value):
        return value

    def __str__(self):
        return 'one of %s' % ', '.join(map(repr, self.values))


class Boolean(NamedTuple):
    """True or False (Python's or NumPy's)."""

    def accepts(self, value):
        return isinstance(value, (bool, numpy.bool_))

    def convert(self, value):
        return bool(value)

    def __str__(self):
        return 'a bool'


class InstanceOf(NamedTuple):
    """An instance of ``type_``, called ``text`` in messages."""
    type_: type
    text: str

    def accepts(self, value):
        return isinstance(value, self.type_)

    def convert(self, value):
        return value

    def __str__(self):
        return self.text


def allowed(constraints):
    """The phrase for a tuple of constraints: 'None or an int in the range [0, inf)'."""
    parts = ['None' if c is None else str(c) for c in constraints]
    return parts[0] if len(parts) == 1 else '%s or %s' % (', '.join(parts[:-1]), parts[-1])


def requirement(allowed_values, meaning=None):
    """'must be <allowed_values> (<meaning>)': the words of every message about a bad
    value (``allowed_values``: a phrase, or a tuple of constraints)."""
    if not isinstance(allowed_values, str):
        allowed_values = allowed(allowed_values)
    return 'must be %s%s' % (allowed_values, ' (%s)' % meaning if meaning else '')


def _first_accepting(constraints, value):
    """The first constraint that accepts ``value`` (None for the None constraint),
    or ``_REJECTED``."""
    for c in constraints:
        if (value is None) if c is None else c.accepts(value):
            return c
    return _REJECTED


_REJECTED = object()


def accepts(constraints, value):
    """Whether one of ``constraints`` allows ``value``."""
    return _first_accepting(constraints, value) is not _REJECTED


def validate(caller, name, value, constraints, meaning=None):
    """``value`` converted by the first of ``constraints`` that accepts it (ints to
    ``int``, floats to ``float``), or :class:`InvalidParameter` naming ``name`` of
    ``caller``, what it allows and (``meaning``) what it is."""
    c = _first_accepting(constraints, value)
    if c is _REJECTED:
        raise invalid(caller, name, constraints, value, meaning)
    return None if c is None else c.convert(value)


# -------------------------------------------------------------------------- table

class Setting(NamedTuple):
    """One setting of MN: ``name``, ``default``, ``constraints`` (the values it allows)
    and ``meaning`` (one line)."""
    name: str
    default: object
    constraints: tuple
    meaning: str

    def requirement(self):
        """'must be <what it allows> (<meaning>)', as every message about it says."""
        return requirement(self.constraints, self.meaning)

    def problem(self, value):
        """:meth:`requirement` if ``value`` is not allowed, else None."""
        rejected = _first_accepting(self.constraints, value) is _REJECTED
        return self.requirement() if rejected else None


_INT = numbers.Integral
_REAL = numbers.Real
_inf = math.inf

#: MN's settings, in the order of the link's signature.
SETTINGS = {s.name: s for s in (
    Setting('n_components', 3, (Interval(_INT, 1, _inf, 'left'),),
            'K, the Gaussian components fitted to each batch, Sec. 3.2'),
    Setting('em_iters', 2, (Interval(_INT, 0, _inf, 'left'),),
            'the paper\'s "EM iter." E: ceil(E/2) K-means and floor(E/2) EM iterations '
            'per fit, Sec. 5.1'),
    Setting('eps', 2e-5, (Interval(_REAL, 0, _inf, 'neither'),),
            'added to every variance, as BN\'s eps, Eq. 35'),
    Setting('decay', 0.9, (Interval(_REAL, 0, 1, 'neither'),),
            "zeta of Eq. 39 (each older queued batch weighs zeta times less) and BN's "
            'running-average decay'),
    Setting('queue_length', 10, (Interval(_INT, 1, _inf, 'left'),),
            'T of Eq. 38-39: the fitted mixtures of the last T batches used at inference'),
    Setting('fit_fraction', 1.0, (Interval(_REAL, 0, 1, 'right'),),
            'the fraction of a batch\'s points the mixture is fitted to'),
    Setting('min_weight', 0.01, (Interval(_REAL, 0, 1, 'left'),),
            'components lighter than this are pruned, Sec. 5.3'),
    Setting('min_count', 16, (Interval(_REAL, 0, _inf, 'left'),),
            'components with fewer effective points are pruned; 0 turns the rule off'),
    Setting('affine', 'channel', (Options(('channel', 'component', None)),),
            "gamma and beta per channel as BN's, per component as Eq. 37, or none"),
    Setting('lambda_scaling', True, (Boolean(),),
            'whether each component\'s term is scaled by 1/sqrt(lambda_k), Eq. 34'),
    Setting('inference', 'consistent', (Options(('consistent', 'paper', 'running')),),
            "Eq. 38 with Eq. 34's 1/sqrt(lambda) as in training, as printed, or BN's "
            'running averages'),
    Setting('seed', None, (None, Interval(_INT, 0, _inf, 'left')),
            'seeds the per-batch fits; None draws one at random'),
)}


def check(name, value, caller):
    """``value`` of the setting ``name`` checked against :data:`SETTINGS` and converted
    (ints to ``int``, floats to ``float``); raises :class:`InvalidParameter` naming
    ``name`` of ``caller``, what it allows and what it means."""
    s = SETTINGS[name]
    return validate(caller, name, value, s.constraints, s.meaning)


def check_together(values, caller):
    """The settings that constrain each other, given ``values`` (a dict of settings):
    BN's running-average inference has no components to apply ``affine='component'``
    to.  Raises :class:`InvalidParameter` naming both."""
    if values.get('inference') == 'running' and values.get('affine') == 'component':
        raise invalid(caller, 'inference', "'consistent' or 'paper' with "
                      "affine='component' (BN's running statistics have no components)",
                      values['inference'])
