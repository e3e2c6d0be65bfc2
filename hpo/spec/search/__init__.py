"""How a study searches: its space (`space`, from the `[search.<setting>]` tables read by
`tables`), and the samplers and pruners it names (`samplers`, `pruners`, with options declared
as data in `options`)."""
