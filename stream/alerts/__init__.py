"""Sentiment-shift alerts: per aspect and overall, event-time windows whose negative or positive
share, or whose volume, departs from the scope's trailing baseline beyond chance.

* :mod:`~stream.alerts.windows` - observations, event time, slots and their aggregates;
* :mod:`~stream.alerts.config` - the parameters (``MULCOT_ALERTS_*``);
* :mod:`~stream.alerts.stats` - the tests (statsmodels) and Benjamini-Hochberg;
* :mod:`~stream.alerts.detector` - the decisions (watermark, windows, tests, cooldown);
* :mod:`~stream.alerts.state` - where the counts live (memory, Redis);
* :mod:`~stream.alerts.replay` / :mod:`~stream.alerts.runner` - ``mulcot alerts replay`` (a file,
  no broker) and ``mulcot alerts run`` (live, its own consumer group);
* :mod:`~stream.alerts.cli` - the ``mulcot alerts`` verbs.

The wire model is :class:`stream.protocol.Alert`; docs/alerts.md explains the method.
"""

from .config import AlertConfig, WindowSpec
from .detector import Detector, IngestReport, alert_id
from .replay import replay
from .state import MemoryState, RedisState
from .windows import Observation, observe

__all__ = ["AlertConfig", "WindowSpec", "Detector", "IngestReport", "alert_id", "replay", "MemoryState", "RedisState",
           "Observation", "observe"]
