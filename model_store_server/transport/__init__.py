"""How model bytes reach a worker.

HTTP (``http``), one-box placement (``link``), RDMA (``rdma``), and the
choice among them (``factory``).

The interface every transport implements (``Transport``, ``PushResult``) and the
HTTP push are re-exported here, so ``from model_store_server.transport import
HttpTransport`` keeps working.
"""

from model_store_server.transport.http import HttpTransport, PushResult, Transport

__all__ = ["HttpTransport", "PushResult", "Transport"]
