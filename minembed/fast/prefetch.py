"""Batches drawn ahead: ``train_loop(..., ahead=ahead)`` samples step k + 1's pairs on a thread
while step k runs (on a GPU the host's crop sampling would otherwise leave the device idle).

The thread runs the same generator (core/train.py ``batches``) in the same order, and each
step's random generator travels with its batch: the model is the same bit for bit.
"""
import queue
import threading

_END = object()


def ahead(items, depth=2):
    """The items of the iterator ``items``, in order, each drawn on a thread up to ``depth``
    items before the caller asks for it. An exception in the thread is raised here; when the
    caller stops early (an exception, a break), the thread stops after the item it is drawing."""
    q, stop = queue.Queue(maxsize=depth), threading.Event()

    def put(item):  # False once the caller has gone
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def draw():
        try:
            for item in items:
                if not put((None, item)):
                    return
            put((None, _END))
        except BaseException as exc:  # noqa: BLE001  (raised again in the caller's thread)
            put((exc, None))

    thread = threading.Thread(target=draw, name="minembed-batches", daemon=True)
    thread.start()
    try:
        while True:
            exc, item = q.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()
