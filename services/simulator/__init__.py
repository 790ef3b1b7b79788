"""A month in a département: synthetic back-office extracts and their ground truth.

``population`` draws people with a latent fragility and the signals each fund would emit
about them, sized on the figures of docs/domain.md; ``extracts`` writes them as each
fund's back-office would (the producer's CSV format, with a realistic share of bad lines);
``truth`` derives, from what was generated and the rules as written in rules.yaml —
independently of the correlator's code — which situations must form, under which rules.
"""
