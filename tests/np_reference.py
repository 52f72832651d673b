"""A NumPy restatement of HSPG and group Prox-SG, written from the equations.

It shares no code with ``hspg_jax``: groups are handled as in the PyTorch
reference (OTOv1), by moving each member's group axis to the front, flattening
and concatenating the members into one ``(G, n)`` matrix per family.

A family is ``(name, [(leaf_name, axis), ...])``; params are a flat dict of
NumPy arrays.
"""

from __future__ import annotations

import numpy as np


def flat(tree, members):
  """The family's ``(G, n)`` matrix: members' group axes first, concatenated."""
  return np.concatenate(
      [np.moveaxis(tree[name], axis, 0).reshape(tree[name].shape[axis], -1)
       for name, axis in members], axis=1)


def unflat(tree, members, mat):
  """Writes a family's ``(G, n)`` matrix back into ``tree`` (in place)."""
  start = 0
  for name, axis in members:
    moved = np.moveaxis(tree[name], axis, 0)
    width = int(np.prod(moved.shape[1:]))
    block = mat[:, start:start + width].reshape(moved.shape)
    tree[name] = np.moveaxis(block, 0, axis).astype(tree[name].dtype)
    start += width


def cap(proj, zero, margin, upper):
  """The reference implementation's upper_group_sparsity rule, literally."""
  num_groups = proj.shape[0]
  if np.sum(zero) / num_groups >= upper:
    return np.zeros_like(proj)
  trial = np.sum(proj | zero) / num_groups
  if trial <= upper:
    return proj
  k = int(num_groups * (trial - upper))
  k = min(max(0, k), num_groups - 1)
  idx = np.flatnonzero(proj)
  keep = idx[np.argsort(margin[idx], kind="stable")[:k]]
  out = np.zeros_like(proj)
  out[keep] = True
  return out


def hspg_run(x0, families, grad_fn, steps, lr, lam, eps, n_p, *, momentum=None,
             upper=None, prox_first=False, restart=True, nesterov=False):
  """Runs HSPG for ``steps`` steps; returns the list of iterates (after each step).

  ``lr`` may be a function of the step; ``eps`` maps family name -> epsilon
  (a number or a function of the step).
  With ``restart`` the half-space stage starts from a fresh momentum buffer, as
  in the reference, which keeps one buffer per stage.
  """
  x = {k: np.array(v, dtype=np.float64) for k, v in x0.items()}
  buf = None
  history = []
  for t in range(steps):
    lr_t = lr(t) if callable(lr) else lr
    g = {k: np.asarray(v, dtype=np.float64) for k, v in grad_fn(x, t).items()}
    d = {k: v.copy() for k, v in g.items()}
    if not (prox_first and t < n_p):
      for _, members in families:
        X = flat(x, members)
        norms = np.linalg.norm(X, axis=1)
        sub = np.zeros_like(X)
        nz = norms != 0
        sub[nz] = X[nz] / (norms[nz] + 1e-6)[:, None]
        unflat(d, members, flat(d, members) + lam * sub)
    if momentum is not None:
      if restart and t == n_p:
        buf = None
      buf = d if buf is None else {k: momentum * buf[k] + d[k] for k in d}
      d = {k: momentum * buf[k] + d[k] for k in d} if nesterov else buf
    x_hat = {k: x[k] - lr_t * d[k] for k in x}
    if t < n_p:
      if prox_first:
        for _, members in families:
          XH = flat(x_hat, members)
          norms = np.linalg.norm(XH, axis=1)
          factor = np.where(norms > lr_t * lam, 1 - lr_t * lam / np.where(norms > 0, norms, 1), 0)
          unflat(x_hat, members, XH * factor[:, None])
    else:
      for name, members in families:
        X, XH = flat(x, members), flat(x_hat, members)
        sq = np.sum(X * X, axis=1)
        dot = np.sum(XH * X, axis=1)
        zero = sq == 0
        eps_t = eps[name](t) if callable(eps[name]) else eps[name]
        proj = (~zero) & (dot < eps_t * sq)
        if upper is not None:
          margin = np.where(zero, 0, (dot - eps_t * sq) / np.where(zero, 1, sq))
          proj = cap(proj, zero, margin, upper)
        XH[proj | zero] = 0.0
        unflat(x_hat, members, XH)
    x = x_hat
    history.append({k: v.copy() for k, v in x.items()})
  return history


def prox_sg_run(x0, families, grad_fn, steps, lr, lam):
  """Group Prox-SG: ``x <- prox_{lr*lam}(x - lr * grad)``."""
  x = {k: np.array(v, dtype=np.float64) for k, v in x0.items()}
  for t in range(steps):
    g = grad_fn(x, t)
    v = {k: x[k] - lr * np.asarray(g[k], np.float64) for k in x}
    for _, members in families:
      V = flat(v, members)
      norms = np.linalg.norm(V, axis=1)
      with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.maximum(0.0, 1 - lr * lam / norms)
      factor[norms == 0] = 0.0
      unflat(v, members, V * factor[:, None])
    x = v
  return x
