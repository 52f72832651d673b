"""hspg-jax: group-sparsity optimizers (HSPG, Prox-SG, ADMM, OBProx-SG) as Optax transforms.

The core imports only jax, optax and numpy. Flax integration lives in
``hspg_jax.flax`` and is imported on demand.
"""

from hspg_jax.groups import Family
from hspg_jax.groups import GroupAxis
from hspg_jax.groups import GroupRules
from hspg_jax.groups import GroupStructure
from hspg_jax.groups import Member
from hspg_jax.groups import resolve as resolve_groups
from hspg_jax._fused import HSPGState
from hspg_jax.admm import ADMMState
from hspg_jax.admm import admm
from hspg_jax.admm import admm_consensus
from hspg_jax.dhspg import DHSPGState
from hspg_jax.dhspg import dhspg
from hspg_jax.hspg import GroupLassoState
from hspg_jax.hspg import HalfSpaceState
from hspg_jax.hspg import RestartState
from hspg_jax.hspg import add_group_lasso_subgradient
from hspg_jax.hspg import half_space_projection
from hspg_jax.hspg import hspg
from hspg_jax.hspg import restart_at
from hspg_jax.hierarchical import HierarchicalState
from hspg_jax.hierarchical import hierarchical_hspg
from hspg_jax.metrics import group_mask_tree
from hspg_jax.metrics import group_norms
from hspg_jax.metrics import group_sparsity
from hspg_jax.metrics import num_zero_groups
from hspg_jax.metrics import omega
from hspg_jax.metrics import zero_group_masks
from hspg_jax.obproxsg import OrthantDirectionState
from hspg_jax.obproxsg import obprox_sg
from hspg_jax.obproxsg import orthant_projection
from hspg_jax.prox import block_soft_threshold_factor
from hspg_jax.prox import group_soft_threshold
from hspg_jax.prox import l1_soft_threshold
from hspg_jax.proxsg import GroupProxState
from hspg_jax.proxsg import group_prox
from hspg_jax.proxsg import l1_prox
from hspg_jax.proxsg import prox_sg
from hspg_jax.proxsg import prox_sg_l1

__version__ = "0.1.0"

__all__ = [
    "ADMMState",
    "DHSPGState",
    "Family",
    "GroupAxis",
    "GroupLassoState",
    "GroupProxState",
    "GroupRules",
    "GroupStructure",
    "HSPGState",
    "HalfSpaceState",
    "HierarchicalState",
    "Member",
    "OrthantDirectionState",
    "RestartState",
    "add_group_lasso_subgradient",
    "admm",
    "admm_consensus",
    "block_soft_threshold_factor",
    "dhspg",
    "group_mask_tree",
    "group_norms",
    "group_prox",
    "group_soft_threshold",
    "group_sparsity",
    "half_space_projection",
    "hierarchical_hspg",
    "hspg",
    "l1_prox",
    "l1_soft_threshold",
    "num_zero_groups",
    "obprox_sg",
    "omega",
    "orthant_projection",
    "prox_sg",
    "prox_sg_l1",
    "resolve_groups",
    "restart_at",
    "zero_group_masks",
]
