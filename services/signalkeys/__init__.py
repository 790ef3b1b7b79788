"""The exchange's key endpoint: the keys funds seal their signals' person members with."""
