"""What the command line runs on one machine that is not a flow: the local Prefect server
(:mod:`.prefect_server`), the local stack of ``surgflow up`` (:mod:`.stack`) and the demo's
loop (:mod:`.demo`), which starts the flows of ``surgflow_flows``."""
