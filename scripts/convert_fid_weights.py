"""Convert pytorch-fid's FID Inception weights (.pth) to the npz that experiments/fid.py loads.

    pip install torch          # only this script needs it
    python scripts/convert_fid_weights.py pt_inception-2015-12-05-6726825d.pth OUT.npz

The source is the file pytorch-fid downloads (``experiments.fid.STANDARD_WEIGHTS_URL``):
the TensorFlow 2015-12-05 Inception graph of TTUR's FID, ported to PyTorch.  Its
state-dict names (``Mixed_5b.branch5x5_2.conv.weight``, ``....bn.running_var``) map to npz
keys (``Mixed_5b/branch5x5_2/conv/W``, ``.../bn/avg_var``) by
``experiments.fid.torch_to_chainer``; ``fc.*`` and ``num_batches_tracked`` are dropped.
The result is checked against the network (``experiments.models.fid_inception``: every
array present, shapes right) before it is written.  A source whose SHA-256 does not start with 6726825d is converted with a
warning: FIDs computed with it are not comparable to published ones.
Default OUT: ``experiments.fid.default_weights_path()``, where runs look for it.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mixnorm import _compat  # noqa: F401,E402

from experiments import fid  # noqa: E402


def read_state_dict(path):
    """{name: numpy array} of a PyTorch .pth state dict (needs torch)."""
    try:
        import torch
    except ImportError:
        sys.exit('error: reading a .pth file needs PyTorch: pip install torch  (only this '
                 'converter needs it), then run the command again')
    try:
        try:
            obj = torch.load(path, map_location='cpu', weights_only=True)
        except TypeError:                      # torch < 1.13 has no weights_only
            obj = torch.load(path, map_location='cpu')
    except Exception as e:
        sys.exit('error: cannot read %s as a PyTorch file (%s: %s); download it again from '
                 '%s' % (path, type(e).__name__, e, fid.STANDARD_WEIGHTS_URL))
    if isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
        obj = obj['state_dict']
    if not isinstance(obj, dict):
        sys.exit('error: %s holds a %s, not a state dict' % (path, type(obj).__name__))
    return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, 'detach')}


def convert(src, out, state_dict=None, log=print):
    """Convert ``src`` (or an already read ``state_dict``) to ``out``; returns ``out``."""
    if state_dict is None:
        state_dict = read_state_dict(src)
    arrays, dropped = fid.torch_to_chainer(state_dict)
    sha = fid.file_sha256(src) if src and os.path.isfile(src) else ''
    if not sha.startswith(fid.STANDARD_SHA256_PREFIX):
        log('WARNING: %s (sha256 %s) is not the standard %s (sha256 %s...); FIDs computed '
            'with it are NOT comparable to published FIDs'
            % (src, sha[:16] or '?', fid.STANDARD_WEIGHTS_NAME, fid.STANDARD_SHA256_PREFIX))
    fid.save_weights(out, arrays, source_name=os.path.basename(src or ''), source_sha256=sha)
    log('wrote %s: %d arrays (%d values); dropped %d entries (%s)' % (
        out, len(arrays), sum(a.size for a in arrays.values()), len(dropped),
        ', '.join(sorted({d.rsplit('.', 1)[-1] if 'num_batches' in d else d
                          for d in dropped}))))
    log('sha256 of the npz: %s' % fid.file_sha256(out))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('src', help='pt_inception-2015-12-05-6726825d.pth')
    p.add_argument('out', nargs='?', help='output .npz (default: %s)'
                   % fid.default_weights_path())
    args = p.parse_args(argv)
    if not os.path.isfile(args.src):
        sys.exit('error: no such file: %s (download %s)' % (args.src, fid.STANDARD_WEIGHTS_URL))
    try:
        convert(args.src, args.out or fid.default_weights_path())
    except fid.FIDWeightsError as e:
        sys.exit('error: %s' % e)


if __name__ == '__main__':
    main()
