"""Policy assembly shared by the store and the policy lab (``tiers.build_tiers``)."""
