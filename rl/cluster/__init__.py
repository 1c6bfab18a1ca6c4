"""The Ray side: start-up and actor environments, rollout and reward worker pools, weight transfer."""
