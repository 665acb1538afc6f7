"""Publishing: topics, payload models, the MQTT publisher and the results journal (its outbox)."""
