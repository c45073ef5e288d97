package dev.edgerun.bridge

import java.io.IOException
import java.io.InputStream
import java.net.ConnectException
import java.net.HttpURLConnection
import java.net.NoRouteToHostException
import java.net.SocketTimeoutException
import java.net.URL
import java.net.UnknownHostException
import java.util.Base64

/**
 * Client of a local edge-run runtime (`edge-run serve`) for Android apps and JVM programs.
 *
 * Every call is blocking (run it off Android's main thread) except [chatStream], which runs on its own
 * thread and returns a cancellable [ChatStream]. Failures are typed [EdgeException]s. The client holds no
 * connection between calls and is safe to share between threads.
 *
 * @param baseUrl where the runtime listens, e.g. "http://127.0.0.1:8080" (`edge-run serve --port 8080`)
 * @param apiKey sent as `Authorization: Bearer <apiKey>` when the runtime was started with `--api-key`
 * @param connectTimeoutMs how long to wait for the TCP connection (loopback answers at once; a closed
 *   port fails immediately with [EdgeException.Unreachable])
 * @param readTimeoutMs how long to wait for each read; image generation on a phone can take minutes
 * @param defaultChatModel model id sent when [ChatOptions.model] is null; null lets the runtime use its
 *   default chat model ([DEFAULT_CHAT_MODEL] unless configured otherwise)
 */
class EdgeClient @JvmOverloads constructor(
    baseUrl: String = DEFAULT_BASE_URL,
    val apiKey: String? = null,
    val connectTimeoutMs: Int = 3_000,
    val readTimeoutMs: Int = 600_000,
    val defaultChatModel: String? = null,
) {
    val baseUrl: String = baseUrl.trimEnd('/')

    init {
        require(this.baseUrl.startsWith("http://") || this.baseUrl.startsWith("https://")) {
            "baseUrl must start with http:// or https://, got \"$baseUrl\". Use e.g. \"$DEFAULT_BASE_URL\"."
        }
        require(connectTimeoutMs > 0) { "connectTimeoutMs must be > 0, got $connectTimeoutMs" }
        require(readTimeoutMs > 0) { "readTimeoutMs must be > 0, got $readTimeoutMs" }
    }

    // ------------------------------------------------------------------ chat

    /** Chat and return the whole answer text (non-streamed). */
    @JvmOverloads
    @Throws(EdgeException::class)
    fun chat(messages: List<ChatMessage>, options: ChatOptions = ChatOptions()): String =
        chatCompletion(messages, options).text

    /** Chat and return the answer with its finish reason and token usage. */
    @JvmOverloads
    @Throws(EdgeException::class)
    fun chatCompletion(messages: List<ChatMessage>, options: ChatOptions = ChatOptions()): ChatCompletion {
        val doc = postJson("/v1/chat/completions", chatBody(messages, options, stream = false))
        val choice = doc.list("choices").firstOrNull() as? Map<*, *>
            ?: throw EdgeException.Protocol("chat answer has no choices: ${Json.stringify(doc).take(300)}")
        val message = choice["message"] as? Map<*, *>
            ?: throw EdgeException.Protocol("chat choice has no message")
        val usage = (doc["usage"] as? Map<*, *>)?.let {
            Usage(it.int("prompt_tokens"), it.int("completion_tokens"), it.int("total_tokens"))
        }
        val calls = (message["tool_calls"] as? List<*>).orEmpty().map { c ->
            val call = c as? Map<*, *> ?: throw EdgeException.Protocol("a tool call is not an object: $c")
            val fn = call["function"] as? Map<*, *> ?: throw EdgeException.Protocol("a tool call has no function")
            ToolCall(call["id"] as? String ?: "", fn["name"] as? String ?: "", fn["arguments"] as? String ?: "{}")
        }
        return ChatCompletion(
            text = message["content"] as? String ?: "",
            finishReason = choice["finish_reason"] as? String,
            model = doc["model"] as? String,
            usage = usage,
            toolCalls = calls,
            seed = (doc["system_fingerprint"] as? String)?.substringAfterLast("-seed-", "")?.toLongOrNull(),
        )
    }

    /**
     * Stream a chat over server-sent events. Returns at once; [onToken] receives each piece of text on a
     * background thread (on Android, post to the UI with `runOnUiThread`; do not block there on the thread
     * that may call [ChatStream.cancel]). [onDone] is called once at the end. The concatenated tokens equal
     * the [chat] answer for the same request when sampling is greedy (temperature 0).
     */
    @JvmOverloads
    fun chatStream(
        messages: List<ChatMessage>,
        options: ChatOptions = ChatOptions(),
        onDone: DoneListener? = null,
        onToken: TokenListener,
    ): ChatStream {
        val body = Json.stringify(chatBody(messages, options, stream = true)) // bad arguments fail here, in the caller
        val stream = ChatStream(baseUrl)
        val worker = Thread({ runStream(body, stream, onToken, onDone) }, "edge-run-chat-stream")
        worker.isDaemon = true
        worker.start()
        return stream
    }

    private fun runStream(body: String, stream: ChatStream, onToken: TokenListener, onDone: DoneListener?) {
        var text: String? = null
        var error: Throwable? = null
        var http: StreamHttp? = null
        var connected = false
        try {
            val headers = LinkedHashMap<String, String>()
            headers["Accept"] = "text/event-stream"
            headers["Content-Type"] = "application/json; charset=utf-8"
            headers["User-Agent"] = USER_AGENT
            apiKey?.let { headers["Authorization"] = "Bearer $it" }
            try {
                http = StreamHttp.open(URL("$baseUrl/v1/chat/completions"), "POST", headers,
                    body.toByteArray(Charsets.UTF_8), connectTimeoutMs, readTimeoutMs) { stream.attach(it) }
            } catch (e: IOException) {
                throw EdgeException.Unreachable(baseUrl, e)
            }
            connected = true
            http.readHead()
            if (http.status !in 200..299) {
                val errorText = http.body().use { it.readBytes().toString(Charsets.UTF_8) }
                throw EdgeException.fromHttp(http.status, errorText, http.headers["retry-after"])
            }
            val reader = SseReader(http.body())
            while (true) {
                val event = reader.next() ?: throw EdgeException.Protocol("the chat stream ended without [DONE]")
                if (event.data == "[DONE]") break
                val chunk = parseObject(event.data)
                chunk["error"]?.let { throw streamError(it) }
                val choice = chunk.list("choices").firstOrNull() as? Map<*, *> ?: continue
                val token = (choice["delta"] as? Map<*, *>)?.get("content") as? String ?: continue
                if (token.isNotEmpty() && !stream.deliver(token, onToken)) break
            }
            if (stream.isCancelled) throw EdgeException.Cancelled(stream.textSoFar)
            text = stream.textSoFar
        } catch (e: Throwable) {
            error = when {
                stream.isCancelled -> EdgeException.Cancelled(stream.textSoFar)
                e is EdgeException -> e
                e is IOException -> transportError(e, connected)
                else -> e // thrown by the caller's listener: surface it unchanged
            }
        } finally {
            http?.close()
        }
        stream.finish(text, error, onDone)
    }

    private fun chatBody(messages: List<ChatMessage>, o: ChatOptions, stream: Boolean): Map<String, Any?> {
        require(messages.isNotEmpty()) { "messages must hold at least one ChatMessage, got an empty list" }
        val body = LinkedHashMap<String, Any?>()
        (o.model ?: defaultChatModel)?.let { body["model"] = it }
        body["messages"] = messages.map { m ->
            val msg = linkedMapOf<String, Any?>("role" to m.role, "content" to m.content)
            m.toolCalls?.let { calls ->
                msg["tool_calls"] = calls.map {
                    mapOf("id" to it.id, "type" to "function", "function" to mapOf("name" to it.name, "arguments" to it.arguments))
                }
            }
            m.toolCallId?.let { msg["tool_call_id"] = it }
            msg
        }
        o.maxTokens?.let { body["max_tokens"] = it }
        o.temperature?.let { body["temperature"] = it }
        o.topP?.let { body["top_p"] = it }
        o.seed?.let { body["seed"] = it }
        o.stop?.let { body["stop"] = it }
        o.tools?.let { tools ->
            body["tools"] = tools.map {
                mapOf("type" to "function", "function" to mapOf("name" to it.name, "description" to it.description,
                    "parameters" to it.parameters))
            }
        }
        o.toolChoice?.let {
            body["tool_choice"] = if (it in listOf("auto", "none", "required")) it
                else mapOf("type" to "function", "function" to mapOf("name" to it))
        }
        body["stream"] = stream
        return body
    }

    private fun streamError(err: Any): EdgeException {
        val e = ErrorBody.parse(Json.stringify(mapOf("error" to err)), 500)
        return when (e.type) {
            "invalid_request_error" -> EdgeException.BadRequest(400, e.message, e.param, e.code)
            "authentication_error" -> EdgeException.Unauthorized(e.message)
            else -> EdgeException.ServerError(500, e.message, e.type)
        }
    }

    // ------------------------------------------------------------------ image

    /** Generate an image from [prompt]; returns PNG bytes of the asked size. */
    @JvmOverloads
    @Throws(EdgeException::class)
    fun imagine(prompt: String, options: ImageOptions = ImageOptions()): ByteArray {
        val body = LinkedHashMap<String, Any?>()
        options.model?.let { body["model"] = it }
        body["prompt"] = prompt
        body["n"] = 1
        body["size"] = "${options.width}x${options.height}"
        body["response_format"] = "b64_json"
        options.steps?.let { body["steps"] = it }
        options.seed?.let { body["seed"] = it }
        options.guidanceScale?.let { body["guidance_scale"] = it }
        val doc = postJson("/v1/images/generations", body)
        val first = doc.list("data").firstOrNull() as? Map<*, *>
            ?: throw EdgeException.Protocol("image answer has no data")
        return decodeB64(first["b64_json"], "data[0].b64_json")
    }

    // ------------------------------------------------------------------ segment

    /** Segment [image] (PNG or JPEG bytes) with prompt [points] and/or a [box]. */
    @JvmOverloads
    @Throws(EdgeException::class)
    fun segment(
        image: ByteArray,
        points: List<SegmentPoint> = emptyList(),
        box: Box? = null,
        options: SegmentOptions = SegmentOptions(),
    ): SegmentResult = segmentRequest("image", Base64.getEncoder().encodeToString(image), points, box, options)

    /** Segment an image sent before, by the [SegmentResult.imageId] of that answer (its encoding is cached). */
    @JvmOverloads
    @Throws(EdgeException::class)
    fun segment(
        imageId: String,
        points: List<SegmentPoint> = emptyList(),
        box: Box? = null,
        options: SegmentOptions = SegmentOptions(),
    ): SegmentResult = segmentRequest("image_id", imageId, points, box, options)

    private fun segmentRequest(
        key: String, value: String, points: List<SegmentPoint>, box: Box?, options: SegmentOptions,
    ): SegmentResult {
        val body = LinkedHashMap<String, Any?>()
        options.model?.let { body["model"] = it }
        body[key] = value
        if (points.isNotEmpty()) body["points"] = points.map { listOf(it.x, it.y, it.label) }
        box?.let { body["box"] = listOf(it.x0, it.y0, it.x1, it.y1) }
        body["multimask"] = options.multimask
        val doc = postJson("/v1/segment", body)
        val masks = doc.list("masks").mapIndexed { i, m ->
            val mask = m as? Map<*, *> ?: throw EdgeException.Protocol("masks[$i] is not an object")
            @Suppress("UNCHECKED_CAST")
            Mask(
                png = decodeB64(mask["png_b64"], "masks[$i].png_b64"),
                score = (mask["score"] as? Number)?.toDouble() ?: Double.NaN,
                bbox = (mask["bbox"] as? List<*>)?.map { (it as Number).toDouble() },
                area = (mask["area"] as? Number)?.toLong(),
                rle = mask["rle"] as? Map<String, Any?>,
            )
        }
        val best = (doc["best"] as? Number)?.toInt()
            ?: masks.indices.maxByOrNull { masks[it].score } ?: 0
        if (masks.isNotEmpty() && best !in masks.indices) {
            throw EdgeException.Protocol("best = $best is outside the ${masks.size} masks")
        }
        return SegmentResult(doc["image_id"] as? String, masks, best, doc["encoder_ran"] as? Boolean)
    }

    // ------------------------------------------------------------------ models, health

    /** The models the runtime knows (`/v1/models`), with their task and whether they are loaded. */
    @Throws(EdgeException::class)
    fun models(): List<ModelInfo> = getJson("/v1/models").list("data").map { m ->
        @Suppress("UNCHECKED_CAST")
        val o = m as? Map<String, Any?> ?: throw EdgeException.Protocol("/v1/models data holds a non-object")
        ModelInfo(
            id = o["id"] as? String ?: throw EdgeException.Protocol("a /v1/models entry has no id"),
            task = o["task"] as? String,
            loaded = o["loaded"] as? Boolean ?: false,
            ownedBy = o["owned_by"] as? String,
            raw = o,
        )
    }

    /** `/health`: throws [EdgeException.Unreachable] when nothing listens at [baseUrl]. */
    @Throws(EdgeException::class)
    fun health(): Health {
        val doc = getJson("/health")
        return Health(doc["status"] as? String ?: "unknown", doc)
    }

    // ------------------------------------------------------------------ HTTP plumbing

    private fun getJson(path: String): Map<String, Any?> = exchange("GET", path, null)

    private fun postJson(path: String, body: Map<String, Any?>): Map<String, Any?> =
        exchange("POST", path, Json.stringify(body))

    private fun exchange(method: String, path: String, body: String?): Map<String, Any?> {
        var conn: HttpURLConnection? = null
        try {
            conn = connect(method, path, body, "application/json")
            val text = openBody(conn).use { it.readBytes().toString(Charsets.UTF_8) }
            return parseObject(text)
        } catch (e: EdgeException) {
            throw e
        } catch (e: IOException) {
            throw transportError(e, connected = conn != null)
        } finally {
            conn?.disconnect()
        }
    }

    /** Open the connection and send [body]; connection failures become [EdgeException.Unreachable]. */
    private fun connect(method: String, path: String, body: String?, accept: String): HttpURLConnection {
        val conn = URL(baseUrl + path).openConnection() as HttpURLConnection
        conn.requestMethod = method
        conn.connectTimeout = connectTimeoutMs
        conn.readTimeout = readTimeoutMs
        conn.useCaches = false
        conn.instanceFollowRedirects = false
        conn.setRequestProperty("Accept", accept)
        conn.setRequestProperty("User-Agent", USER_AGENT)
        apiKey?.let { conn.setRequestProperty("Authorization", "Bearer $it") }
        val bytes = body?.toByteArray(Charsets.UTF_8)
        if (bytes != null) {
            conn.doOutput = true
            conn.setRequestProperty("Content-Type", "application/json; charset=utf-8")
            conn.setFixedLengthStreamingMode(bytes.size)
        }
        try {
            conn.connect()
        } catch (e: IOException) {
            throw EdgeException.Unreachable(baseUrl, e)
        }
        try {
            if (bytes != null) conn.outputStream.use { it.write(bytes) }
        } catch (e: IOException) {
            conn.disconnect()
            throw transportError(e, connected = true)
        }
        return conn
    }

    /** The response body stream of a 2xx answer; any other status becomes its typed [EdgeException]. */
    private fun openBody(conn: HttpURLConnection): InputStream {
        val status = conn.responseCode
        if (status in 200..299) return conn.inputStream
        val errorText = conn.errorStream?.use { it.readBytes().toString(Charsets.UTF_8) }
        throw EdgeException.fromHttp(status, errorText, conn.getHeaderField("Retry-After"))
    }

    private fun transportError(e: IOException, connected: Boolean): EdgeException = when {
        e is SocketTimeoutException && connected -> EdgeException.Timeout(baseUrl, readTimeoutMs, e)
        e is ConnectException || e is NoRouteToHostException || e is UnknownHostException ->
            EdgeException.Unreachable(baseUrl, e)
        else -> EdgeException.Unreachable(baseUrl, e, dropped = connected) // reset or closed mid-answer
    }

    private fun parseObject(text: String): Map<String, Any?> {
        val doc = try {
            Json.parse(text)
        } catch (e: JsonException) {
            throw EdgeException.Protocol("edge-run sent invalid JSON (${e.message}): ${text.take(200)}", e)
        }
        @Suppress("UNCHECKED_CAST")
        return doc as? Map<String, Any?>
            ?: throw EdgeException.Protocol("edge-run sent JSON that is not an object: ${text.take(200)}")
    }

    private fun decodeB64(value: Any?, field: String): ByteArray {
        val s = value as? String ?: throw EdgeException.Protocol("$field is missing or not a string")
        return try {
            Base64.getDecoder().decode(s)
        } catch (e: IllegalArgumentException) {
            throw EdgeException.Protocol("$field is not valid base64: ${e.message}", e)
        }
    }

    private fun Map<*, *>.list(key: String): List<*> =
        this[key] as? List<*> ?: throw EdgeException.Protocol("edge-run's answer has no \"$key\" list")

    private fun Map<*, *>.int(key: String): Int = (this[key] as? Number)?.toInt() ?: 0

    companion object {
        const val DEFAULT_BASE_URL: String = "http://127.0.0.1:8080"
        const val DEFAULT_CHAT_MODEL: String = "smollm2-135m-instruct-q4_1"
        const val VERSION: String = "0.1.0"
        const val USER_AGENT: String = "edge-run-android-bridge/$VERSION"
    }
}
