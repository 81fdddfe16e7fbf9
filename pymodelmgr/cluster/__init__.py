"""pymodelmgr.cluster: ModelManager's API across the nodes of a Ray cluster.

:class:`ClusterModelManager` routes each task to a node where its model is warm and runs
it there in a per-node ModelManager (a Ray actor, the node manager).  Needs the optional
dependency Ray (``pip install 'pymodelmgr[ray]'``); importing this package works without
it, and creating a ClusterModelManager then raises ImportError saying so.
"""
from .client import NO_CAPACITY, NODE_LOST, ClusterModelManager, connect
from .node import NodeManager
from .routing import NodeView, choose_placement, choose_replica

__all__ = ["ClusterModelManager", "NodeManager", "NODE_LOST", "NO_CAPACITY", "connect",
           "NodeView", "choose_placement", "choose_replica"]
