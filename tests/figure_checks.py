"""Checks shared by the figure tests: a rendered figure is a valid, non-blank PNG and
PDF pair with its JSON sidecar."""
import json
import os
import struct

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def png_size(path):
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC, path
    assert head[12:16] == b'IHDR'
    return struct.unpack('>II', head[16:24])


def check_files(result, stem, out, min_png_bytes=0):
    """Assert ``result`` rendered ``<out>/<stem>.{png,pdf}``; return its sidecar JSON."""
    assert result.rendered, result
    png, pdf = (os.path.join(str(out), '%s.%s' % (stem, ext)) for ext in ('png', 'pdf'))
    assert png in result.files and pdf in result.files
    w, h = png_size(png)
    assert w > 400 and h > 300
    assert os.path.getsize(png) > min_png_bytes
    with open(pdf, 'rb') as f:
        data = f.read()
    assert data.startswith(b'%PDF') and b'%%EOF' in data[-64:]
    import matplotlib.image
    img = matplotlib.image.imread(png)
    assert img.shape[:2] == (h, w) and img.std() > 0.01        # not a blank page
    return json.load(open(os.path.join(str(out), stem + '.json')))


def capture_figures(monkeypatch):
    """Record every figure the figures package saves: returns a list that receives, per
    saved figure, ``{'name', 'axes': [{'xlabel', 'ylabel', 'title'}]}`` (of the visible
    axes) before the figure is written and closed."""
    from experiments.figures import output
    seen, save = [], output.save

    def spy(fig, out_dir, name, sources=None):
        seen.append({'name': name, 'axes': [
            {'xlabel': ax.get_xlabel(), 'ylabel': ax.get_ylabel(), 'title': ax.get_title()}
            for ax in fig.axes if ax.get_visible()]})
        return save(fig, out_dir, name, sources)

    monkeypatch.setattr(output, 'save', spy)
    return seen
