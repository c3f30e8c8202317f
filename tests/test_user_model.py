"""MN swapped into a model nobody here wrote, as a Chainer user does it: the optimizer
set up before the swap, ``model.copy()`` as the evaluation model, a one-sample batch, a
layer whose fits fall back to one component, errors in a model whose every block
calls its BN ``bn``, every BN at once, a ``Sequential`` indexed as users index it."""
import mixnorm._compat  # noqa: F401

import numpy as np
import pytest

import chainer
import chainer.functions as F
import chainer.links as L

import mixnorm


class Block(chainer.Chain):
    """conv - BN - ReLU, the unit of a VGG-style network (each block's BN is ``bn``)."""

    def __init__(self, cin, cout):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(cin, cout, 3, pad=1, nobias=True)
            self.bn = L.BatchNormalization(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class VGGish(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.block1 = Block(1, 4)
            self.block2 = Block(4, 6)
            self.fc = L.Linear(6, 3)
            self.bn_fc = L.BatchNormalization(3)

    def forward(self, x):
        h = F.max_pooling_2d(self.block1(x), 2)
        h = self.block2(h)
        return self.bn_fc(self.fc(F.average(h, axis=(2, 3))))


def data(n=16, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 1, 8, 8).astype(np.float32)
    x[: n // 2] += 2.0                                  # two modes
    return x, rng.randint(0, 3, n).astype(np.int32)


def train(model, opt, steps, seed=0):
    for s in range(steps):
        x, t = data(seed=seed + s)
        model.cleargrads()
        F.softmax_cross_entropy(model(x), t).backward()
        opt.update()


def test_an_optimizer_set_up_before_the_swap_trains_the_new_parameters():
    model = VGGish()
    opt = chainer.optimizers.MomentumSGD(lr=0.1)
    opt.setup(model)
    train(model, opt, 2)                       # BN's gamma has momentum by now
    momentum = model.block2.bn.gamma.update_rule.state['v'].copy()
    mixnorm.replace_batch_normalization(model, n_components=2, min_count=4)
    gamma = model.block2.bn.gamma
    assert isinstance(model.block2.bn, mixnorm.MixtureNormalization)
    assert gamma.update_rule is not None
    np.testing.assert_array_equal(gamma.update_rule.state['v'], momentum)
    opt.lr = 0.05                              # the rule still follows the optimizer
    assert gamma.update_rule.hyperparam.lr == 0.05
    before = gamma.array.copy()
    train(model, opt, 2, seed=5)
    assert not np.array_equal(gamma.array, before)


def test_an_evaluation_copy_stays_right_while_the_model_trains():
    model = VGGish()
    mixnorm.replace_batch_normalization(model, ['block1/bn', 'block2/bn'], n_components=2,
                                        min_count=4, seed=0)
    opt = chainer.optimizers.SGD(0.05)
    opt.setup(model)
    train(model, opt, 1)
    eval_model = model.copy()                  # as Chainer's PTB example evaluates
    train(model, opt, 3, seed=1)
    x, _ = data(seed=99)
    with chainer.using_config('train', False):
        np.testing.assert_array_equal(eval_model(x).array, model(x).array)
    train(eval_model, opt, 1, seed=7)          # and the other way round
    with chainer.using_config('train', False):
        np.testing.assert_array_equal(eval_model(x).array, model(x).array)


def test_a_one_sample_batch_warns_as_bn_does():
    mn = mixnorm.MixtureNormalization(3, n_components=2)
    with pytest.warns(UserWarning, match='single point'):
        y = mn(np.ones((1, 3), np.float32))
    assert (y.array == 0).all()


def test_a_layer_whose_fits_fall_back_to_one_component_says_so_once():
    model = VGGish()
    mixnorm.replace_batch_normalization(model, n_components=3)     # min_count=16
    x, _ = data(n=4)                                                # bn_fc: 4 points
    with pytest.warns(UserWarning) as said:
        model(x)
        model(x)
    fallback = [str(w.message) for w in said if "K' = 1" in str(w.message)]
    assert any("'bn_fc'" in m for m in fallback)
    assert len([m for m in fallback if "'bn_fc'" in m]) == 1       # once per layer
    assert model.bn_fc.effective_components == 1


def test_errors_name_the_layers_path():
    model = VGGish()
    mixnorm.replace_batch_normalization(model, n_components=2)
    x, _ = data()
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="'block1/bn'"):
        model(x)
    fresh = VGGish()
    mn = mixnorm.MixtureNormalization(6, n_components=2)
    with fresh.block2.init_scope():              # built by hand, no placement
        del fresh.block2.bn
        fresh.block2.bn = mn
    mixnorm.name_layers(fresh)
    with chainer.using_config('train', False), \
            pytest.raises(RuntimeError, match="'block2/bn' has no statistics"):
        fresh(data()[0])


def test_a_snapshot_of_other_settings_names_the_layers_path(tmp_path):
    model = VGGish()
    mixnorm.replace_batch_normalization(model, n_components=2, min_count=4)
    model(data()[0])
    path = str(tmp_path / 'model.npz')
    chainer.serializers.save_npz(path, model)
    other = VGGish()
    mixnorm.replace_batch_normalization(other, ['block1/bn', 'bn_fc'], n_components=2)
    mixnorm.replace_batch_normalization(other, ['block2/bn'], n_components=3)
    with pytest.raises(ValueError, match="'block2/bn'.*queue_weights"):
        chainer.serializers.load_npz(path, other)


def test_every_bn_at_once_and_sequential_positions_as_users_write_them():
    model = VGGish()
    assert sorted(mixnorm.replace_batch_normalization(model)) == [
        'block1/bn', 'block2/bn', 'bn_fc']
    assert not any(isinstance(link, L.BatchNormalization) for link in model.links())
    seq = chainer.Sequential(L.Linear(3, 4), F.relu, L.BatchNormalization(4))
    assert mixnorm.replace_batch_normalization(seq, [2]) == ['1']   # seq[2]: Chainer's '1'
    assert isinstance(seq[2], mixnorm.MixtureNormalization)
    with pytest.raises(ValueError, match='layer 1 of Sequential is .*relu'):
        mixnorm.replace_batch_normalization(
            chainer.Sequential(L.Linear(3, 4), F.relu, L.BatchNormalization(4)), [1])
    with pytest.raises(ValueError, match='names must be'):
        mixnorm.replace_batch_normalization(VGGish(), 7.5)


def test_mn_is_not_a_batch_normalization_subclass():
    """Documented: code that special-cases ``L.BatchNormalization`` (weight decay
    exclusions, freezing, ChainerMN's create_mnbn_model) does not see MN; BN's state
    and interface are there, by duck typing."""
    mn = mixnorm.MixtureNormalization(3)
    assert not isinstance(mn, L.BatchNormalization)
    assert all(hasattr(mn, a) for a in ('avg_mean', 'avg_var', 'N', 'start_finetuning',
                                        'gamma', 'beta', 'decay', 'eps'))


@pytest.mark.parametrize('K', [2, 3, 5])
def test_the_output_variance_is_about_k_with_eq34s_scaling(K):
    """Eq. 34's 1/sqrt(lambda_k), as the paper writes it: with well separated modes each
    point's term has unit variance within its component and weight 1/lambda_k, so the
    output's variance per channel is about K' (the number of modes), not BN's 1; without
    the factor (``lambda_scaling=False``) it is about 1.  A trained network converted to
    MN with K > 1 therefore sees activations about sqrt(K') times larger."""
    rng = np.random.RandomState(K)
    centres = rng.randn(K, 4) * 20
    x = np.concatenate([rng.randn(400, 4) + c for c in centres])
    for scaling, want in ((True, K), (False, 1.0)):
        mn = mixnorm.MixtureNormalization(4, dtype=np.float64, n_components=K,
                                          em_iters=10, lambda_scaling=scaling, seed=0)
        y = mn(x).array
        assert mn.effective_components == K
        np.testing.assert_allclose(y.var(axis=0), want, rtol=0.05)
