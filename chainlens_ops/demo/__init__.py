"""The newcomer's demo: the whole lifecycle on a sandbox cluster."""

from chainlens_ops.demo.run import DemoOptions, DemoResult, Step, run_demo, tear_down_demo
from chainlens_ops.demo.sandbox import sandbox_root

__all__ = ["DemoOptions", "DemoResult", "Step", "run_demo", "sandbox_root", "tear_down_demo"]
