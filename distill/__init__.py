"""Knowledge distillation of a teacher into a device-sized student. Imports torch."""
