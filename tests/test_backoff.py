"""The retry schedule, a pure function."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gomail.delivery.backoff import RetryPolicy, retry_delay


class RetryDelayTests(SynchronousTestCase):
    """retry_delay(policy, attempts, random)."""

    policy = RetryPolicy(initial=300, factor=2, maximum=3600, jitter=0.2)

    def test_exponential_then_capped(self) -> None:
        """Without jitter (random() = 0.5): 5, 10, 20, 40 minutes, then the one-hour cap."""
        delays = [retry_delay(self.policy, n, lambda: 0.5) for n in range(1, 8)]
        self.assertEqual(delays, [300, 600, 1200, 2400, 3600, 3600, 3600])

    def test_jitter_bounds(self) -> None:
        """random() at its extremes spreads the delay by -20% and (just under) +20%."""
        self.assertEqual(retry_delay(self.policy, 1, lambda: 0.0), 240)
        self.assertAlmostEqual(retry_delay(self.policy, 1, lambda: 0.999999), 360, places=3)

    def test_never_above_the_maximum(self) -> None:
        """Jitter never pushes a capped delay over the maximum."""
        self.assertEqual(retry_delay(self.policy, 10, lambda: 0.999), 3600)

    def test_huge_attempt_count(self) -> None:
        """A very large attempt count does not overflow: it is the cap."""
        self.assertEqual(retry_delay(RetryPolicy(jitter=0), 5000, lambda: 0.5), 3600)
