"""Pure domain of mailpanel: events, deciders, validation rules. No I/O, no clock, no randomness."""
