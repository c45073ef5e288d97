package dev.edgerun.bridge

import java.io.Closeable
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicBoolean

/** Receives each token of a streamed chat, on the stream's own background thread. */
fun interface TokenListener {
    fun onToken(token: String)
}

/**
 * Called once when a stream ends, on the stream's background thread: [text] is the whole answer on
 * success; otherwise [error] says why ([EdgeException.Cancelled] after [ChatStream.cancel]).
 */
fun interface DoneListener {
    fun onDone(text: String?, error: Throwable?)
}

/**
 * Handle of a running streamed chat (see [EdgeClient.chatStream]).
 *
 * [cancel] closes the connection at once (it never waits for the network), which makes the runtime cancel the
 * job at its next step; no token is delivered to the listener after [cancel] returns. [await] blocks until the stream ends (never call it on
 * Android's main thread; use the [DoneListener] there).
 */
class ChatStream internal constructor(private val baseUrl: String) {
    private val cancelled = AtomicBoolean(false)
    private val finished = CountDownLatch(1)
    private val received = StringBuffer()
    private val lock = Any()

    @Volatile private var connection: Closeable? = null
    @Volatile private var text: String? = null
    @Volatile private var error: Throwable? = null

    /** True once [cancel] was called. */
    val isCancelled: Boolean get() = cancelled.get()

    /** True once the stream has ended (answer complete, failed or cancelled). */
    val isDone: Boolean get() = finished.count == 0L

    /** The tokens delivered so far, concatenated. */
    val textSoFar: String get() = received.toString()

    /** Stop the stream. Safe to call from any thread, any number of times, before or after it ends. */
    fun cancel() {
        if (!cancelled.compareAndSet(false, true)) return
        synchronized(lock) { } // wait for a token delivery in progress to finish: none is delivered after this
        connection?.close()
    }

    /** Block until the stream ends; returns the whole answer or throws the [EdgeException] that ended it. */
    @Throws(EdgeException::class)
    fun await(): String {
        finished.await()
        return result()
    }

    /** Like [await] but gives up after [timeout], throwing [EdgeException.Timeout] (the stream keeps running). */
    @Throws(EdgeException::class)
    fun await(timeout: Long, unit: TimeUnit): String {
        if (!finished.await(timeout, unit)) {
            throw EdgeException.Timeout(baseUrl, unit.toMillis(timeout).toInt(), null)
        }
        return result()
    }

    private fun result(): String {
        error?.let { throw it }
        return text!!
    }

    // ---- used by EdgeClient's worker thread ----

    internal fun attach(conn: Closeable) {
        connection = conn
        if (cancelled.get()) conn.close() // cancel() raced with connect
    }

    /** Deliver one token unless cancelled; returns false once the stream is cancelled. */
    internal fun deliver(token: String, listener: TokenListener): Boolean = synchronized(lock) {
        if (cancelled.get()) return false
        received.append(token)
        listener.onToken(token)
        true
    }

    internal fun finish(text: String?, error: Throwable?, listener: DoneListener?) {
        this.text = text
        this.error = error
        finished.countDown()
        listener?.onDone(text, error)
    }
}
