"""Training library: loaders over the image cache, the epoch loop, checkpoints, devices, DDP.

The Kedro wiring lives in ``cxr_spurious.pipelines.training``; this package never imports it.
"""
