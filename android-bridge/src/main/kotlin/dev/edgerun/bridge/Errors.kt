package dev.edgerun.bridge

import java.io.IOException

/**
 * Every failure the bridge reports. A `when` over the subclasses is exhaustive:
 *
 * - [Unreachable]  nothing answers at the base URL (runtime not started, wrong port) or the connection dropped
 * - [Timeout]      the runtime accepted the connection but did not answer within the read timeout
 * - [Busy]         the runtime's queue is full (HTTP 503); retry after [Busy.retryAfterSeconds]
 * - [BadRequest]   the runtime rejected the input (HTTP 400/413/422); [serverMessage] says why
 * - [Unauthorized] missing or wrong API key (HTTP 401)
 * - [NotFound]     unknown or not-installed model (HTTP 404)
 * - [ServerError]  any other HTTP error status
 * - [Cancelled]    the caller cancelled a stream; [Cancelled.partialText] holds what arrived before
 * - [Protocol]     the runtime answered something the bridge cannot read
 *
 * It extends [IOException] so Java and Android code that already handles I/O failures catches it too.
 */
sealed class EdgeException(message: String, cause: Throwable? = null) : IOException(message, cause) {
    /** HTTP status of the answer, or null when there was no HTTP answer. */
    open val status: Int? get() = null

    /** The runtime's own error message (OpenAI error body `error.message`), when it sent one. */
    open val serverMessage: String? get() = null

    /** [dropped] is true when the connection was made but closed before the answer was complete. */
    class Unreachable @JvmOverloads constructor(val baseUrl: String, cause: Throwable?, val dropped: Boolean = false) :
        EdgeException(
            if (dropped) {
                "edge-run at $baseUrl closed the connection before answering (${cause?.message ?: "closed"}). " +
                    "Check the server log; it may have stopped."
            } else {
                "edge-run is not reachable at $baseUrl (${cause?.message ?: "connection failed"}). " +
                    "Start it with `edge-run serve` and check the host and port."
            },
            cause,
        )

    class Timeout(val baseUrl: String, val timeoutMs: Int, cause: Throwable?) :
        EdgeException("edge-run at $baseUrl did not answer within $timeoutMs ms. " +
            "Raise readTimeoutMs for long jobs or check the server log.", cause)

    class Busy(override val serverMessage: String, val retryAfterSeconds: Double?) :
        EdgeException("edge-run is busy: $serverMessage" +
            (retryAfterSeconds?.let { " (retry after $it s)" } ?: "")) {
        override val status: Int get() = 503
    }

    class BadRequest(
        override val status: Int,
        override val serverMessage: String,
        val param: String?,
        val code: String?,
    ) : EdgeException(serverMessage)

    class Unauthorized(override val serverMessage: String) : EdgeException(serverMessage) {
        override val status: Int get() = 401
    }

    class NotFound(override val serverMessage: String, val param: String?, val code: String?) :
        EdgeException(serverMessage) {
        override val status: Int get() = 404
    }

    class ServerError(override val status: Int, override val serverMessage: String, val type: String?) :
        EdgeException("edge-run failed (HTTP $status): $serverMessage")

    class Cancelled(val partialText: String) : EdgeException("the stream was cancelled")

    class Protocol(message: String, cause: Throwable? = null) : EdgeException(message, cause)

    companion object {
        /**
         * Map an HTTP error answer to its typed exception. [body] is the raw response body (OpenAI error JSON,
         * a FastAPI `{"detail": ...}` body, or anything else); [retryAfter] is the Retry-After header value.
         */
        @JvmStatic
        fun fromHttp(status: Int, body: String?, retryAfter: String?): EdgeException {
            val err = ErrorBody.parse(body, status)
            return when (status) {
                400, 413, 422 -> BadRequest(status, err.message, err.param, err.code)
                401, 403 -> Unauthorized(err.message)
                404 -> NotFound(err.message, err.param, err.code)
                503 -> Busy(err.message, parseRetryAfter(retryAfter))
                else -> ServerError(status, err.message, err.type)
            }
        }

        /** Retry-After in seconds ("2", "0.5"); null when absent or an HTTP date (not sent by edge-run). */
        @JvmStatic
        fun parseRetryAfter(value: String?): Double? =
            value?.trim()?.toDoubleOrNull()?.takeIf { it.isFinite() && it >= 0 }
    }
}

/** The fields of an OpenAI error body, with fallbacks for bodies of other shapes. */
internal class ErrorBody(val message: String, val type: String?, val param: String?, val code: String?) {
    companion object {
        fun parse(body: String?, status: Int): ErrorBody {
            val fallback = "HTTP $status" + (body?.trim()?.takeIf { it.isNotEmpty() }?.let { ": ${it.take(500)}" } ?: "")
            val doc = try {
                body?.let { Json.parse(it) }
            } catch (e: JsonException) {
                null
            }
            if (doc !is Map<*, *>) return ErrorBody(fallback, null, null, null)
            val error = doc["error"]
            if (error is Map<*, *>) {
                val msg = error["message"] as? String ?: fallback
                return ErrorBody(msg, error["type"] as? String, error["param"] as? String, error["code"]?.toString())
            }
            if (error is String) return ErrorBody(error, null, null, null)
            // FastAPI's own validation body: {"detail": "..."} or {"detail": [{"loc": [...], "msg": "..."}]}
            return when (val detail = doc["detail"]) {
                is String -> ErrorBody(detail, null, null, null)
                is List<*> -> {
                    val parts = detail.filterIsInstance<Map<*, *>>().map { d ->
                        val loc = (d["loc"] as? List<*>)?.joinToString(".") ?: ""
                        if (loc.isEmpty()) "${d["msg"]}" else "$loc: ${d["msg"]}"
                    }
                    ErrorBody(if (parts.isEmpty()) fallback else parts.joinToString("; "), null, null, null)
                }
                else -> ErrorBody(fallback, null, null, null)
            }
        }
    }
}
