"""Resources shared by every stage."""


import dagster as dg

from climb_assets.home import ClimbHome


class ClimbHomeResource(dg.ConfigurableResource):
    """Where the platform keeps its state. Empty means ``$CLIMB_HOME`` (default ``./.climb``)."""

    root: str = ""

    def home(self) -> ClimbHome:
        return ClimbHome.at(self.root).ensure()
