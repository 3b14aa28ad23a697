"""The streaming service: Faust agents from Kafka posts to Kafka results and a Redis cache."""
