"""Matplotlib figures in the papers' style: curves with error bands, weight heatmaps.

Functions return a Figure; `results.write_run` saves it. The Agg backend is used so figures
render without a display (CI, batch jobs); notebooks show the returned Figure inline.
"""

from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use('Agg', force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def curves(x, ys: Mapping[str, Sequence[float]], *, xlabel: str, ylabel: str, title: str = '',
           errs: Optional[Mapping[str, Sequence[float]]] = None, styles: Optional[Mapping] = None,
           logx: bool = False, logy: bool = False, hlines: Optional[Mapping[str, float]] = None,
           xs: Optional[Mapping[str, Sequence[float]]] = None, ylim=None):
  """Named curves y(x), with optional +-2 stderr bands and dashed horizontal reference lines."""
  fig, ax = plt.subplots(figsize=(5.2, 3.8))
  for name, y in ys.items():
    xv = np.asarray(xs[name] if xs and name in xs else x)
    y = np.asarray(y)
    style = dict((styles or {}).get(name, {}))
    line, = ax.plot(xv, y, label=name, **style)
    if errs and name in errs:
      e = 2.0 * np.asarray(errs[name])
      ax.fill_between(xv, y - e, y + e, color=line.get_color(), alpha=0.2, lw=0)
  for name, value in (hlines or {}).items():
    ax.axhline(value, ls='--', lw=1, color='k' if 'LSA' in name else 'gray', label=name)
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  if logx:
    ax.set_xscale('log')
  if logy:
    ax.set_yscale('log')
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def heatmaps(mats: Mapping[str, np.ndarray], *, title: str = ''):
  """Side-by-side heatmaps on a shared symmetric colour scale (learned vs theory weights)."""
  mats = {k: np.asarray(v) for k, v in mats.items()}
  vmax = max(float(np.abs(m).max()) for m in mats.values()) or 1.0
  fig, axes = plt.subplots(1, len(mats), figsize=(2.8 * len(mats) + 0.8, 2.8))
  axes = np.atleast_1d(axes)
  for ax, (name, m) in zip(axes, mats.items()):
    im = ax.imshow(m, cmap='RdBu_r', vmin=-vmax, vmax=vmax)
    ax.set_title(name, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.colorbar(im, ax=list(axes), shrink=0.8)
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def panels(x, curves_by_panel: Mapping[str, Mapping[str, Sequence[float]]], *, xlabel: str,
           ylabel: str, bands: Optional[Mapping[str, Mapping[str, tuple]]] = None,
           styles: Optional[Mapping] = None,
           hlines: Optional[Mapping[str, Mapping[str, float]]] = None,
           vlines: Sequence[float] = (), ylim=None, logy: bool = False, title: str = ''):
  """A row of panels (Figure 1 of Zhang et al.): per panel, named curves y(x) with (low, high)
  bands (confidence intervals), dashed horizontal reference lines, dotted vertical markers.

  Colours follow the curve name across panels.
  """
  names = list(dict.fromkeys(n for c in curves_by_panel.values() for n in c))
  colors = {n: f'C{i % 10}' for i, n in enumerate(names)}
  fig, axes = plt.subplots(1, len(curves_by_panel), figsize=(4.2 * len(curves_by_panel), 3.8),
                           squeeze=False)
  for ax, (panel, ys) in zip(axes[0], curves_by_panel.items()):
    for name, y in ys.items():
      style = {'color': colors[name], **dict((styles or {}).get(name, {}))}
      ax.plot(np.asarray(x), np.asarray(y), label=name, **style)
      band = (bands or {}).get(panel, {}).get(name)
      if band is not None:
        ax.fill_between(np.asarray(x), np.asarray(band[0]), np.asarray(band[1]),
                        color=style['color'], alpha=0.2, lw=0)
    for name, value in (hlines or {}).get(panel, {}).items():
      ax.axhline(value, ls='--', lw=1, color='k' if 'LSA' in name else 'gray', label=name)
    for v in vlines:
      ax.axvline(v, ls=':', lw=1, color='gray')
    ax.set(xlabel=xlabel, title=panel)
    if logy:
      ax.set_yscale('log')
    if ylim is not None:
      ax.set_ylim(*ylim)
    ax.grid(alpha=0.3, which='both')
  axes[0][0].set_ylabel(ylabel)
  axes[0][-1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1.0))
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig
