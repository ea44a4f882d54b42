"""`make bench`: the load benchmark of the bridge (see `bench.run`).

Three processes: the real server (one uvicorn process), the Realtime double in echo mode,
and a lean load generator speaking Twilio Media Streams. The generator also times a round
trip straight to the double, so the figure reported is what the bridge itself adds.
"""
